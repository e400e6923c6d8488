/** agent/transport-openssh.ts (the system ssh client) against the embedded gateway and a real sshd (cases in transport-cases.ts). */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { enrollDevice } from '../../agent/enroll.js';
import type { TransportError } from '../../agent/transport.js';
import { classifySshStderr, createOpensshTransport, opensshArgs } from '../../agent/transport-openssh.js';
import { formatCertificate, formatPublicKey, generateKeyPair, parsePublicKey } from '../../ca/index.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { withBroker } from '../../testkit/broker.js';
import { startDeviceService, startGatewayEnv } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { exchangeWithin, mintToken, within } from './fixtures.js';
import { freePool, freePort, startBrokerSshd } from './net-fixtures.js';
import { registerTransportCases } from './transport-cases.js';

const transport = createOpensshTransport();
registerTransportCases(test, transport);

test('openssh: the command line: no system config, strict known_hosts, forward failure exits, keepalives, loopback binds', (t) => {
  const args = opensshArgs({
    host: 'broker.example', port: 2222, username: 'tunnel', key: generateKeyPair(), keyPath: '/s/device_key', certificateLine: 'x',
    certificatePath: '/s/device_key-cert.pub', hostKey: generateKeyPair().publicKey, knownHostsPath: '/s/known_hosts', bindAddress: '10.0.0.2',
    forwards: [{ name: 'ssh', remotePort: 20000, localHost: '127.0.0.1', localPort: 22 }, { name: 'web', remotePort: 20001, localHost: '::1', localPort: 80 }],
    keepaliveIntervalMs: 15_000, keepaliveCountMax: 3, connectTimeoutMs: 20_000,
  });
  const line = args.join(' ');
  for (const option of ['-N', '-F /dev/null', '-o ExitOnForwardFailure=yes', '-o ServerAliveInterval=15', '-o ServerAliveCountMax=3',
    '-o StrictHostKeyChecking=yes', '-o UserKnownHostsFile=/s/known_hosts', '-o GlobalKnownHostsFile=/dev/null', '-o UpdateHostKeys=no',
    '-o CertificateFile=/s/device_key-cert.pub', '-i /s/device_key', '-o BatchMode=yes', '-o IdentitiesOnly=yes',
    '-R 127.0.0.1:20000:127.0.0.1:22', '-R 127.0.0.1:20001:[::1]:80', '-b 10.0.0.2', '-p 2222', '-l tunnel']) {
    t.true(line.includes(option), option);
  }
  t.deepEqual(args.slice(-2), ['--', 'broker.example'], 'the host comes last, after --');
});

const stderrCases: Array<[string, string[], string | undefined]> = [
  ['host key', ['debug1: x', 'Host key verification failed.'], 'HOST_KEY_MISMATCH'],
  ['changed key', ['@@@@@@@', '@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @'], 'HOST_KEY_MISMATCH'],
  ['auth', ['tunnel@127.0.0.1: Permission denied (publickey).'], 'AUTH_REFUSED'],
  ['forward', ['Error: remote port forwarding failed for listen port 20000'], 'FORWARD_REFUSED'],
  ['keepalive', ['Timeout, server 127.0.0.1 not responding.'], 'KEEPALIVE_TIMEOUT'],
  ['refused', ['ssh: connect to host 127.0.0.1 port 2222: Connection refused'], 'UNREACHABLE'],
  ['closed', ['Connection to 127.0.0.1 closed by remote host.'], 'DISCONNECTED'],
  ['debug lines are ignored', ['debug1: connect_next: connect to 127.0.0.1 port 80: Connection refused'], undefined],
];
for (const [name, lines, code] of stderrCases) {
  test(`openssh: stderr classification: ${name}`, (t) => {
    t.is<string | undefined, string | undefined>(classifySshStderr(lines)?.code, code);
  });
}

test('openssh: against sshd in OpenSSH mode the host certificate is verified through the host CA alone; another CA is refused', async (t) => {
  await ensureGatewayUsers(['tunnel', 'operator']);
  const pool = await freePool(2);
  const sshPort = await freePort();
  await withBroker(async (b) => {
    const sshd = await startBrokerSshd(b.dir, sshPort, pool);
    const svc = await startDeviceService('ssh:');
    try {
      await withTempDir(async (dir) => {
        const enrollment = await enrollDevice({ stateDir: join(dir, 'state'), broker: { url: b.broker.apiUrl, pin: b.init.apiPin }, token: await mintToken(b) });
        const { state, paths } = enrollment;
        const base = {
          host: state.ssh.host, port: state.ssh.port, username: state.ssh.username, key: enrollment.key, keyPath: paths.key,
          certificateLine: enrollment.certificateLine, certificatePath: paths.certificate, hostKey: parsePublicKey(state.ssh.hostKey),
          forwards: [{ name: 'ssh', remotePort: pool.first, localHost: '127.0.0.1', localPort: svc.port }],
          keepaliveIntervalMs: 15_000, keepaliveCountMax: 3, connectTimeoutMs: 5000,
        };
        // Only the CA line: no pinned key to fall back on.
        const caOnly = join(dir, 'known_hosts.ca');
        await writeFile(caOnly, `@cert-authority [${state.ssh.host}]:${state.ssh.port} ${state.ssh.hostCertificateAuthority}\n`);
        const tunnel = await transport.open({ ...base, knownHostsPath: caOnly });
        try {
          t.is(await exchangeWithin(pool.first, 'ca'), 'ssh:ca');
        } finally {
          await tunnel.close();
        }
        const otherCa = join(dir, 'known_hosts.other');
        await writeFile(otherCa, `@cert-authority [${state.ssh.host}]:${state.ssh.port} ${formatPublicKey(generateKeyPair().publicKey)}\n`);
        const refused = await t.throwsAsync(transport.open({ ...base, knownHostsPath: otherCa }));
        t.is((refused as TransportError).code, 'HOST_KEY_MISMATCH');
      });
    } finally {
      await sshd.stop();
      await svc.close();
    }
  }, { config: { ssh: { mode: 'openssh', listen: `127.0.0.1:${sshPort}`, publicPort: sshPort }, ports: { ...pool, perDevice: 2 } } });
});

test('openssh: an ssh child left behind by a crashed agent (same state directory) is ended before a new one starts', async (t) => {
  const env = await startGatewayEnv();
  const svc = await startDeviceService('ssh:');
  try {
    const block = await freePool(2);
    const { key, cert } = env.deviceCert({ deviceId: 'dev_a', block });
    const identity = await env.identity('device', key, cert);
    const spec = {
      host: '127.0.0.1', port: env.port, username: 'tunnel', key, keyPath: identity.keyPath, certificateLine: formatCertificate(cert),
      certificatePath: identity.certPath!, hostKey: env.hostKey.publicKey, knownHostsPath: env.knownHosts, pidFile: join(env.dir, 'ssh.pid'),
      forwards: [{ name: 'ssh', remotePort: block.first, localHost: '127.0.0.1', localPort: svc.port }],
      keepaliveIntervalMs: 15_000, keepaliveCountMax: 3, connectTimeoutMs: 5000,
    };
    const orphan = await transport.open(spec); // its agent "crashed": nobody will close it
    const pid = Number(await readFile(spec.pidFile, 'utf8'));
    t.true(pid > 0);
    // The next start dials a broker that is not there: no takeover can end the old session, only the pid file.
    const next = await t.throwsAsync(transport.open({ ...spec, port: await freePort() }));
    t.is((next as TransportError).code, 'UNREACHABLE');
    const end = await within(orphan.closed, 5000, null);
    t.truthy(end, 'the old ssh was ended');
    t.throws(() => process.kill(pid, 0), undefined, 'the old ssh is gone');
    t.is(await exchangeWithin(block.first, 'x'), '', 'its forward is gone');
  } finally {
    await env.close();
    await svc.close();
  }
});
