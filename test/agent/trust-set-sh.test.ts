/**
 * The shell agent (agent/certunnel-agent.sh, run by dash) and the broker's
 * trust set (issue #14): it says it can (capabilities), stores a grant's
 * `trust` checked with jq (state.json, which the Node agent reads back, and
 * known_hosts with every host key and an @cert-authority line per host CA),
 * refuses a malformed one (TRUST_INVALID, the previous kept), retries
 * without capabilities on an older broker's refusal, hands curl every pin,
 * and — slept through a host-key rotation — meets a real sshd with a key it
 * does not know, renews once and connects with the key the renewal brought.
 *
 * The broker's side of #14 is faked by a small HTTP server that answers
 * like one (grants signed by a throwaway CA the real sshd trusts); the pin
 * test runs against the real broker's TLS port.
 */
import test from 'ava';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { loadEnrollment, statePaths, type DeviceState } from '../../agent/state-dir.js';
import { readAgentStatus } from '../../agent/status.js';
import type { CertificateGrantWire, TrustSetWire } from '../../api/index.js';
import { formatCertificate, formatPublicKey, generateKeyPair, parsePublicKey, signDeviceCert, type KeyPair } from '../../ca/index.js';
import { parseWith } from '../../broker/http/schemas.js';
import { withBroker } from '../../testkit/broker.js';
import { REPO_ROOT } from '../../testkit/cli.js';
import { startDeviceService, type DeviceService } from '../../testkit/gateway.js';
import { runCommand, sshKeygenOk, withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { startSshd, type RunningSshd } from '../../testkit/sshd.js';
import { answersWithin, mintToken, spawnShellAgent } from './fixtures.js';
import { freePool } from './net-fixtures.js';

const SCRIPT = join(REPO_ROOT, 'agent', 'certunnel-agent.sh');
const keyLine = (): string => formatPublicKey(generateKeyPair().publicKey);
const PIN_A = `sha256//${'A'.repeat(43)}=`;

/** A broker before 0.5 refuses unknown fields: its answer, from the real schema code. */
function olderRefusal(body: unknown): string | null {
  try {
    parseWith(z.strictObject({ token: z.string(), publicKey: z.string(), name: z.string().optional(), deviceId: z.string(), timestamp: z.number(), nonce: z.string(), signature: z.string() }).partial(), body);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

interface FakeBroker {
  readonly url: string;
  readonly ca: KeyPair;
  readonly ports: { first: number; last: number };
  readonly requests: Array<{ path: string; body: Record<string, unknown> }>;
  /** What grants carry as `trust` (undefined: none, as from a broker before 0.5) and as ssh.hostKey. */
  trust: unknown;
  hostKey: string;
  readonly hostCa: string;
  sshPort: number;
  refuseCapabilities: boolean;
  /** Seconds after issue at which grants suggest renewal (certificates live 60 s: the agent's jitter stays within 3 s). */
  renewAfterSeconds: number;
  close(): Promise<void>;
}

/** An HTTP server answering /v1/enroll and /v1/renew with grants for the presented (then enrolled) key. */
async function startFakeBroker(ports: { first: number; last: number }): Promise<FakeBroker> {
  const ca = generateKeyPair();
  let deviceKey: string | undefined;
  let serial = 1000n;
  const broker: FakeBroker = {
    url: '', ca, ports, requests: [], trust: undefined, hostKey: keyLine(), hostCa: keyLine(), sshPort: 2222, refuseCapabilities: false, renewAfterSeconds: 3600,
    close: async () => undefined,
  };
  const grant = (): CertificateGrantWire => {
    const now = Date.now();
    const cert = signDeviceCert({ ca, publicKey: parsePublicKey(deviceKey!), deviceId: 'dev_shelltrust000001', ports, serial: ++serial, now: new Date(now), validitySeconds: 60 });
    return {
      deviceId: 'dev_shelltrust000001', name: null, ports, certificate: formatCertificate(cert), serial: cert.serial.toString(),
      validAfter: new Date(Number(cert.validAfter) * 1000).toISOString(), validBefore: new Date(Number(cert.validBefore) * 1000).toISOString(),
      renewAfter: new Date(now + broker.renewAfterSeconds * 1000).toISOString(),
      ssh: { host: '127.0.0.1', port: broker.sshPort, username: 'root', hostKey: broker.hostKey, hostCertificateAuthority: broker.hostCa },
      ...(broker.trust === undefined ? {} : { trust: broker.trust as TrustSetWire }),
    };
  };
  const answer = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString()));
    req.on('end', () => {
      const body = JSON.parse(text || '{}') as Record<string, unknown>;
      broker.requests.push({ path: req.url ?? '', body });
      const refusal = broker.refuseCapabilities ? olderRefusal(body) : null;
      if (refusal) return answer(res, 400, { error: { code: 'BAD_REQUEST', message: refusal } });
      if (req.url === '/v1/enroll') {
        deviceKey = String(body.publicKey);
        return answer(res, 201, grant());
      }
      if (req.url === '/v1/renew') return answer(res, 200, grant());
      answer(res, 404, { error: { code: 'NOT_FOUND', message: 'no such route' } });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(broker, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  });
}

async function withFakeBroker(fn: (f: FakeBroker, dir: string) => Promise<void>): Promise<void> {
  const f = await startFakeBroker(await freePool(2));
  try {
    await withTempDir((dir) => fn(f, dir));
  } finally {
    await f.close();
  }
}

function enroll(f: FakeBroker, state: string) {
  return runCommand('sh', [SCRIPT, 'enroll', '--url', f.url, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: 'ctt_shelltrusttoken' } });
}

async function stateOf(state: string): Promise<DeviceState> {
  return JSON.parse(await readFile(statePaths(state).state, 'utf8')) as DeviceState;
}

function trustOf(f: FakeBroker, hostKeys: string[], apiPins: string[] = []): TrustSetWire {
  return { hostKeys, hostCertificateAuthorities: [f.hostCa, keyLine()], apiPins };
}

test('shell: ok/enroll sends capabilities and stores the trust set: state.json (read back by the Node agent), known_hosts, status counts', async (t) => {
  await withFakeBroker(async (f, dir) => {
    const next = keyLine();
    f.trust = { ...trustOf(f, [`${f.hostKey} broker-now`, next, f.hostKey]), apiPins: [PIN_A] };
    const state = join(dir, 'state');
    const r = await enroll(f, state);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(f.requests[0]!.body.capabilities, ['trust-set-v1']);
    const enrollment = (await loadEnrollment(state))!;
    const expected = f.trust as TrustSetWire;
    t.deepEqual(enrollment.state.trust, { hostKeys: [f.hostKey, next], hostCertificateAuthorities: expected.hostCertificateAuthorities, apiPins: [PIN_A] });
    const knownHosts = await readFile(statePaths(state).knownHosts, 'utf8');
    const lines = knownHosts.trim().split('\n');
    t.is(lines.filter((l) => l.startsWith('[127.0.0.1]:2222 ssh-ed25519 ')).length, 2, knownHosts);
    t.is(lines.filter((l) => l.startsWith('@cert-authority [127.0.0.1]:2222 ssh-ed25519 ')).length, 2, knownHosts);
    for (const key of [f.hostKey, next, ...expected.hostCertificateAuthorities]) {
      t.regex((await sshKeygenOk(['-F', '[127.0.0.1]:2222', '-f', statePaths(state).knownHosts])).stdout, new RegExp(key.split(' ')[1]!.replace(/[+/]/g, '\\$&')));
    }
    // No configured pin (plain http): no pin to extend.
    t.deepEqual((await readAgentStatus(state, [])).trust, { hostKeys: 2, hostCertificateAuthorities: 2, apiPins: 0, fromBroker: true });
  });
});

test('shell: ok/an older broker refuses capabilities: enroll retries once without them; no trust set, known_hosts as before', async (t) => {
  await withFakeBroker(async (f, dir) => {
    f.refuseCapabilities = true;
    const state = join(dir, 'state');
    const r = await enroll(f, state);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(f.requests.map((q) => 'capabilities' in q.body), [true, false]);
    t.is((await stateOf(state)).trust, undefined);
    t.is((await readFile(statePaths(state).knownHosts, 'utf8')).trim().split('\n').length, 2);
  });
});

test('shell: fail/a malformed trust set at enrollment is TRUST_INVALID: enrolled on ssh\'s key and CA alone', async (t) => {
  const bad: Array<[string, unknown]> = [
    ['a second line smuggled in', { hostKeys: [`${keyLine()}\n@cert-authority * ${keyLine()}`], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
    ['no host keys', { hostKeys: [], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
    ['a key ssh-keygen cannot read', { hostKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAD'], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
    ['a bad pin', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: ['sha256//short'] }],
    ['null', null],
    ['five CAs', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine(), keyLine(), keyLine(), keyLine(), keyLine()], apiPins: [] }],
  ];
  await withFakeBroker(async (f, dir) => {
    for (const [name, trust] of bad) {
      f.trust = trust;
      const state = join(dir, name.replace(/\W+/g, '-'));
      const r = await enroll(f, state);
      t.is(r.code, 0, `${name}: ${r.stderr}`);
      t.regex(r.stderr, /TRUST_INVALID/, name);
      t.is((await stateOf(state)).trust, undefined, name);
      t.is((await readFile(statePaths(state).knownHosts, 'utf8')).trim().split('\n').length, 2, name);
    }
  });
});

// ---------------------------------------------------------------------------
// Real sshd: recovery from a slept-through host-key rotation, and a malformed set on renewal.

/** A real sshd trusting F's CA for F's port block (user root). */
async function withSshd(f: FakeBroker, fn: (sshd: RunningSshd, hostKey: string, svc: DeviceService) => Promise<void>, dir: string): Promise<void> {
  const caPub = join(dir, 'user_ca.pub');
  await writeFile(caPub, `${formatPublicKey(f.ca.publicKey)}\n`);
  const principals = join(dir, 'principals');
  const { first, last } = f.ports;
  await writeFile(principals, `restrict,port-forwarding,permitlisten="127.0.0.1:${first}",permitlisten="127.0.0.1:${last}" ports-${first}-${last}\n`);
  const sshd = await startSshd({ config: [`TrustedUserCAKeys ${caPub}`, `AuthorizedPrincipalsFile ${principals}`, 'AuthorizedKeysFile none', 'AllowTcpForwarding remote', 'PermitTTY no'] });
  const svc = await startDeviceService('ssh:');
  try {
    const hostKey = formatPublicKey(parsePublicKey((await sshKeygenOk(['-y', '-f', sshd.hostKeyPath])).stdout));
    await fn(sshd, hostKey, svc);
  } finally {
    await svc.close();
    await sshd.stop();
  }
}

test('shell: ok/recovery: real sshd presents a key outside the stored set -> renewal brings it -> connected; a malformed set on a later renewal is refused, the previous kept', async (t) => {
  await withFakeBroker(async (f, dir) => {
    await withSshd(f, async (sshd, sshdKey, svc) => {
      const old = f.hostKey;
      f.sshPort = sshd.port;
      f.trust = trustOf(f, [old]);
      const state = join(dir, 'state');
      const r = await enroll(f, state);
      t.is(r.code, 0, r.stderr);
      const agent = spawnShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']);
      try {
        // The broker has not rotated yet: mismatch -> renewal (old set) -> mismatch -> backoff; never connected.
        await agent.waitForLog((l) => l.event === 'renewed', 'a renewal after the mismatch', 30_000);
        await agent.waitForLog((l) => l.event === 'backoff', 'a backoff', 30_000);
        t.true(agent.logs.some((l) => l.event === 'connect_failed' && l.code === 'HOST_KEY_MISMATCH'));
        t.false(agent.logs.some((l) => l.event === 'connected'), 'a key outside the set is never accepted');
        t.false(agent.logs.some((l) => l.event === 'trust_changed'), 'the same set again is no change');
        // Rotated: the next renewal brings the sshd's key.
        f.trust = trustOf(f, [sshdKey, old]);
        f.hostKey = sshdKey;
        await agent.waitForLog((l) => l.event === 'connected', 'connected after the rotation', 30_000);
        await answersWithin(f.ports.first, 'rot', 'ssh:rot');
        const changed = agent.logs.find((l) => l.event === 'trust_changed');
        t.truthy(changed);
        t.deepEqual(changed!.to, { hostKeys: 2, hostCertificateAuthorities: 2, apiPins: 0 });
        t.false(agent.output().includes(sshdKey.split(' ')[1]!), 'no key in the logs');
        t.deepEqual((await stateOf(state)).trust?.hostKeys, [sshdKey, old]);
        const renewals = f.requests.filter((q) => q.path === '/v1/renew');
        t.true(renewals.length >= 2 && renewals.every((q) => JSON.stringify(q.body.capabilities) === '["trust-set-v1"]'));

        // A later renewal with a malformed set: refused, the set and known_hosts kept, the tunnel comes back.
        const knownHosts = await readFile(statePaths(state).knownHosts, 'utf8');
        f.trust = { hostKeys: 'not-a-list', hostCertificateAuthorities: [], apiPins: [] };
        const current = await stateOf(state);
        // The agent renews at its own time: move it by restarting with a due certificate.
        await writeFile(statePaths(state).state, JSON.stringify({ ...current, renewAfter: new Date(Date.parse(current.validAfter) + 1000).toISOString() }));
        agent.child.kill('SIGTERM');
        await agent.exited;
        const again = spawnShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']);
        try {
          const refused = await again.waitForLog((l) => l.event === 'trust_refused', 'trust_refused', 30_000);
          t.is(refused.code, 'TRUST_INVALID');
          await again.waitForLog((l) => l.event === 'connected', 'connected with the kept set', 30_000);
          t.deepEqual((await stateOf(state)).trust?.hostKeys, [sshdKey, old]);
          t.is(await readFile(statePaths(state).knownHosts, 'utf8'), knownHosts);
        } finally {
          again.child.kill('SIGTERM');
          await again.exited;
        }
      } finally {
        agent.child.kill('SIGTERM');
        await agent.exited;
      }
    }, dir);
  });
});

// ---------------------------------------------------------------------------
// Pins: curl gets every pin of the set, against the real broker's TLS port.

test('shell: ok/renewal over the API pinned by the trust set when the configured pin is stale (curl --pinnedpubkey "a;b"); without the set, refused', async (t) => {
  await withBroker(async (b) => {
    const svc = await startDeviceService('ssh:');
    try {
      await withTempDir(async (dir) => {
        const state = join(dir, 'state');
        const r = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) } });
        t.is(r.code, 0, r.stderr);
        const enrolled = await stateOf(state);
        const run = async (s: DeviceState): Promise<Record<string, unknown>> => {
          await writeFile(statePaths(state).state, JSON.stringify(s));
          const agent = spawnShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--poll', '1']);
          try {
            return await agent.waitForLog((l) => l.event === 'renewed' || l.event === 'renew_failed', 'a renewal outcome', 30_000);
          } finally {
            agent.child.kill('SIGTERM');
            await agent.exited;
          }
        };
        // Certificates of 60 s renewed at a tenth of their life: each run renews within seconds.
        // As an older broker left it: no set (this broker sent one, naming its pin).
        const { trust: given, ...untrusting } = enrolled;
        t.deepEqual(given?.apiPins, [b.init.apiPin]);
        const stalePin = { ...untrusting, broker: { url: enrolled.broker.url, pin: PIN_A } };
        const failed = await run(stalePin);
        t.is(failed.event, 'renew_failed', 'the stale pin alone: nothing sent');
        t.is(failed.code, 'UNREACHABLE', 'curl refused the TLS key');
        const trust: TrustSetWire = { hostKeys: [enrolled.ssh.hostKey], hostCertificateAuthorities: [enrolled.ssh.hostCertificateAuthority], apiPins: [PIN_A, b.init.apiPin] };
        const renewed = await run({ ...(await stateOf(state)), broker: stalePin.broker, trust });
        t.is(renewed.event, 'renewed', 'a pin of the set is accepted');
        await waitFor(async () => (await stateOf(state)).serial !== enrolled.serial, 'state.json has the new certificate', 5000);
      });
    } finally {
      await svc.close();
    }
  }, { config: { certs: { deviceValiditySeconds: 60, renewAtFraction: 0.1 } } });
});
