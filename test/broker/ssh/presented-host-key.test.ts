/**
 * The embedded gateway presents what the broker's TrustRoots says (issue
 * #14), with the real `ssh` client as the referee: the host key pinned in
 * known_hosts before a host-key rotation, the next one after set(); a
 * tunnel opened before the switch keeps carrying traffic; the host
 * certificate verifies with @cert-authority, a host-CA rotation's next CA
 * included.
 */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../../ca/index.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice } from '../../../testkit/device-tunnel.js';
import { exchange, isListening, startDeviceService } from '../../../testkit/gateway.js';
import { runCommand } from '../../../testkit/openssh.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity } from '../../../testkit/ssh-client.js';
import { dataDirTrust, hostCertificateLine, hostKeyRotation, type SettableTrustRoots } from '../../../testkit/trust.js';
import type { TrustSnapshot } from '../../../broker/core/trust-roots.js';

interface Rig {
  roots: SettableTrustRoots;
  initial: TrustSnapshot;
  hostCa: KeyPair;
}

function withRotatingBroker(fn: (b: TestBroker, rig: Rig) => Promise<void>): Promise<void> {
  let rig: Rig | undefined;
  return withBroker((b) => fn(b, rig!), {
    trustRoots: async (dir) => {
      rig = await dataDirTrust(dir);
      return rig.roots;
    },
  });
}

/**
 * Connects with a key the gateway will refuse, so only the host key check is judged: 'accepted' when ssh got as
 * far as user authentication, 'refused' when it stopped at the host key.
 */
async function hostCheck(b: TestBroker, knownHostsLines: string[], label: string): Promise<'accepted' | 'refused'> {
  const knownHosts = join(b.dir, `${label}.known_hosts`);
  await writeFile(knownHosts, `${knownHostsLines.join('\n')}\n`);
  const identity = await writeClientIdentity(b.dir, `${label}-probe`, generateKeyPair());
  const ssh = spawnSsh([...sshArgs({ port: b.broker.sshPort, knownHosts, identity }), '-N']);
  const code = await ssh.exited;
  const stderr = ssh.stderr();
  if (code === 0) throw new Error('the probe logged in');
  if (/Permission denied/.test(stderr)) return 'accepted';
  if (/Host key verification failed|HOST IDENTIFICATION HAS CHANGED|No .* host key is known/i.test(stderr)) return 'refused';
  throw new Error(`unexpected ssh outcome ${code}: ${stderr.trim()}`);
}

const keyLine = (b: TestBroker, key: KeyPair['publicKey']): string => `[127.0.0.1]:${b.broker.sshPort} ${formatPublicKey(key)}`;
const caLine = (b: TestBroker, ca: KeyPair['publicKey']): string => `@cert-authority [127.0.0.1]:${b.broker.sshPort} ${formatPublicKey(ca)}`;

/** ssh-keyscan's view: the plain keys and the certificates the server presents. */
async function keyscan(b: TestBroker, certificates: boolean): Promise<string> {
  const out = await runCommand('ssh-keyscan', [...(certificates ? ['-c'] : []), '-t', 'ed25519', '-p', String(b.broker.sshPort), '127.0.0.1']);
  return out.stdout;
}

test('ok/host-key rotation: the old key before set(), the next after; a tunnel opened before still carries traffic', async (t) => {
  await withRotatingBroker(async (b, rig) => {
    const service = await startDeviceService('hello ');
    try {
      const device = await enrollTestDevice(b, 'rot-1');
      const tunnel = await connectDevice(device, b.broker.sshPort, service.port);
      try {
        t.is((await exchange(device.port, 'before')).toString(), 'hello before');
        t.is(await hostCheck(b, [keyLine(b, rig.initial.hostKey.publicKey)], 'old-before'), 'accepted');
        const rotation = hostKeyRotation(rig.initial, rig.hostCa);
        t.is(await hostCheck(b, [keyLine(b, rotation.next.publicKey)], 'next-before'), 'refused');

        rig.roots.set(rotation.learn);
        t.is(await hostCheck(b, [keyLine(b, rig.initial.hostKey.publicKey)], 'old-learn'), 'accepted', 'learn: still the current key');

        rig.roots.set(rotation.committed);
        t.is(await hostCheck(b, [keyLine(b, rotation.next.publicKey)], 'next-after'), 'accepted');
        t.is(await hostCheck(b, [keyLine(b, rig.initial.hostKey.publicKey)], 'old-after'), 'refused');
        t.true((await keyscan(b, false)).includes(formatPublicKey(rotation.next.publicKey)));
        // The tunnel made before the switch: still up, still relaying, on its own (old) host key.
        t.is((await exchange(device.port, 'after')).toString(), 'hello after');
        t.is(tunnel.child.exitCode, null);
      } finally {
        await tunnel.stop();
      }
    } finally {
      await service.close();
    }
  });
});

test('ok/the host certificate verifies with @cert-authority, and after a host-CA rotation with the next CA', async (t) => {
  await withRotatingBroker(async (b, rig) => {
    t.is(await hostCheck(b, [caLine(b, rig.initial.hostCa)], 'ca-before'), 'accepted');
    t.true((await keyscan(b, true)).includes('ssh-ed25519-cert-v01@openssh.com'), 'the gateway presents a certificate');

    const nextCa = generateKeyPair();
    rig.roots.set({
      ...rig.initial,
      rotation: null,
      hostCa: nextCa.publicKey,
      hostCertificate: hostCertificateLine(nextCa, rig.initial.hostKey),
      trust: { ...rig.initial.trust, hostCertificateAuthorities: [formatPublicKey(nextCa.publicKey)] },
    });
    t.is(await hostCheck(b, [caLine(b, nextCa.publicKey)], 'ca-next'), 'accepted');
    t.is(await hostCheck(b, [caLine(b, rig.initial.hostCa)], 'ca-old'), 'refused');
    // Devices that pinned the key itself are not affected by a host-CA rotation.
    t.is(await hostCheck(b, [keyLine(b, rig.initial.hostKey.publicKey)], 'key-pinned'), 'accepted');
    // A known_hosts with the old CA and the pinned key (what agents write): OpenSSH falls back on the key.
    t.is(await hostCheck(b, [caLine(b, rig.initial.hostCa), keyLine(b, rig.initial.hostKey.publicKey)], 'ca-old-and-key'), 'accepted');
  });
});

test('ok/rekeys of a live tunnel that verified the host certificate: before and after the switch, on the key it began with', async (t) => {
  await withRotatingBroker(async (b, rig) => {
    const service = await startDeviceService('');
    const device = await enrollTestDevice(b, 'rekey-1');
    const knownHosts = join(b.dir, 'rekey.known_hosts');
    await writeFile(knownHosts, `${caLine(b, rig.initial.hostCa)}\n`);
    // RekeyLimit 16K: a key exchange every few chunks of traffic; -v: ssh says each one.
    const tunnel = spawnSsh([
      ...sshArgs({ port: b.broker.sshPort, knownHosts, identity: device.identity, user: device.grant.ssh.username }),
      '-v', '-N', '-o', 'RekeyLimit=16K', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:${device.port}:127.0.0.1:${service.port}`,
    ]);
    try {
      await waitFor(async () => tunnel.child.exitCode !== null || (await isListening(device.port)), 'the tunnel to listen', 20_000);
      t.regex(tunnel.stderr(), /Server host certificate: ssh-ed25519-cert-v01@openssh.com/);
      const payload = Buffer.alloc(256 * 1024, 7);
      const keyExchanges = (): number => tunnel.stderr().match(/SSH2_MSG_NEWKEYS received/g)?.length ?? 0;
      t.is((await exchange(device.port, payload)).length, payload.length);
      const before = keyExchanges();
      t.true(before > 4, `${before} key exchanges before the switch`);
      rig.roots.set(hostKeyRotation(rig.initial, rig.hostCa).committed);
      t.is((await exchange(device.port, payload)).length, payload.length);
      t.true(keyExchanges() > before + 4, `${keyExchanges() - before} key exchanges after the switch`);
      t.is(tunnel.child.exitCode, null, tunnel.stderr().split('\n').slice(-5).join('\n'));
    } finally {
      await tunnel.stop();
      await service.close();
    }
  });
});

test('fail/a certificate of another key is refused: the gateway keeps presenting what it had', async (t) => {
  await withRotatingBroker(async (b, rig) => {
    const other = generateKeyPair();
    rig.roots.set({ ...rig.initial, hostKey: other, hostCertificate: rig.initial.hostCertificate });
    t.is(await hostCheck(b, [keyLine(b, rig.initial.hostKey.publicKey)], 'kept'), 'accepted');
    t.true(b.logs.some((line) => line.includes('does not certify the new host key')));
  });
});
