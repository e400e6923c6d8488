/**
 * The Node agent and the broker's trust set (issue #14, agent/trust-set.ts):
 * a grant's `trust` is stored (state.json, known_hosts) and any member is
 * accepted — by the ssh2 transport (host keys), by the openssh transport
 * (host keys and host CAs, against a real sshd presenting a host
 * certificate), by the API client (pins, against the broker's real TLS
 * port); a malformed set is refused and the previous kept; an older broker
 * (no `trust`, no `capabilities` field) leaves everything as before; and a
 * device that slept through a host-key rotation meets a real sshd with a
 * key it does not know, renews once over the pinned API and connects.
 *
 * Long file: each part (validation, storage, older brokers, pins, both
 * transports, recovery) is short and shares the rigs defined here.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Agent } from '../../agent/agent.js';
import { brokerRefusedCapabilities } from '../../agent/capabilities.js';
import { parseAgentConfig } from '../../agent/config.js';
import { enrollDevice } from '../../agent/enroll.js';
import { AgentError } from '../../agent/errors.js';
import { renewCertificate } from '../../agent/renewer.js';
import { loadEnrollment, renderKnownHosts, statePaths, writeGrant, type DeviceState } from '../../agent/state-dir.js';
import { formatAgentStatus, readAgentStatus } from '../../agent/status.js';
import { createOpensshTransport } from '../../agent/transport-openssh.js';
import { createSsh2Transport } from '../../agent/transport-ssh2.js';
import type { Transport } from '../../agent/transport.js';
import { parseTrustSet, trustOfGrant } from '../../agent/trust-set.js';
import { tunnelSpecFor } from '../../agent/tunnel-spec.js';
import {
  AGENT_CAPABILITIES, ApiError, apiRequest, type ApiCall, type CertificateGrantWire, type EnrollRequest, type RenewRequest, type TrustSetWire,
} from '../../api/index.js';
import { formatCertificate, formatPublicKey, generateKeyPair, parsePublicKey, signDeviceCert, type PublicKey } from '../../ca/index.js';
import { parseWith } from '../../broker/http/schemas.js';
import { withBroker } from '../../testkit/broker.js';
import { startDeviceService, startGatewayEnv, type DeviceService } from '../../testkit/gateway.js';
import { sshKeygenOk, withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { startSshd, type RunningSshd } from '../../testkit/sshd.js';
import { answersWithin, enrolledDevice, FakeClock, FakeTransport, memoryLogger, mintToken, type TestDevice } from './fixtures.js';
import { freePool } from './net-fixtures.js';

const keyLine = (): string => formatPublicKey(generateKeyPair().publicKey);
const PIN_A = `sha256//${'A'.repeat(43)}=`;
const PIN_B = `sha256//${'B'.repeat(43)}=`;

// ---------------------------------------------------------------------------
// Validation

test('ok/parseTrustSet: key lines normalized (comments dropped, duplicates removed, order kept); pins kept', (t) => {
  const [k1, k2, ca] = [keyLine(), keyLine(), keyLine()];
  const set = parseTrustSet({ hostKeys: [`${k1} broker now`, k2, k1], hostCertificateAuthorities: [ca], apiPins: [PIN_A, PIN_B], future: 'ignored' });
  t.deepEqual(set, { hostKeys: [k1, k2], hostCertificateAuthorities: [ca], apiPins: [PIN_A, PIN_B] });
  t.deepEqual(parseTrustSet({ hostKeys: [k1], hostCertificateAuthorities: [ca], apiPins: [] }).apiPins, []);
});

const malformed: Array<[string, unknown]> = [
  ['not an object', 'trust'],
  ['null', null],
  ['a list', []],
  ['no host keys', { hostKeys: [], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
  ['five host keys', { hostKeys: [keyLine(), keyLine(), keyLine(), keyLine(), keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
  ['a garbage key', { hostKeys: ['ssh-ed25519 AAAAnotakey'], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
  ['an RSA key', { hostKeys: ['ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC'], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
  ['a key with a second line', { hostKeys: [`${keyLine()}\n@cert-authority * ${keyLine()}`], hostCertificateAuthorities: [keyLine()], apiPins: [] }],
  ['no host CA list', { hostKeys: [keyLine()], apiPins: [] }],
  ['a number for a CA', { hostKeys: [keyLine()], hostCertificateAuthorities: [7], apiPins: [] }],
  ['no pin list', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()] }],
  ['a short pin', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: ['sha256//AAAA'] }],
  ['a pin of another hash', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: [`sha1//${'A'.repeat(43)}=`] }],
  ['five pins', { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: [PIN_A, PIN_B, PIN_A, PIN_B, PIN_A] }],
];
for (const [name, value] of malformed) {
  test(`fail/parseTrustSet: ${name} is TRUST_INVALID; trustOfGrant keeps the previous set`, (t) => {
    const err = t.throws(() => parseTrustSet(value));
    t.true(err instanceof AgentError);
    t.is((err as AgentError).code, 'TRUST_INVALID');
    const previous: TrustSetWire = { hostKeys: [keyLine()], hostCertificateAuthorities: [keyLine()], apiPins: [PIN_A] };
    const outcome = trustOfGrant({ trust: value as TrustSetWire }, previous);
    t.is(outcome.trust, previous);
    t.is(outcome.refused?.code, 'TRUST_INVALID');
  });
}

test('ok/known_hosts holds every trusted host key and an @cert-authority line per host CA; ssh-keygen -F finds each', async (t) => {
  await withTempDir(async (dir) => {
    const ssh = { host: '127.0.0.1', port: 2222, username: 'tunnel', hostKey: keyLine(), hostCertificateAuthority: keyLine() };
    const trust: TrustSetWire = { hostKeys: [ssh.hostKey, keyLine()], hostCertificateAuthorities: [ssh.hostCertificateAuthority, keyLine()], apiPins: [] };
    const path = join(dir, 'known_hosts');
    await writeFile(path, renderKnownHosts(ssh, undefined, trust));
    const found = (await sshKeygenOk(['-F', '[127.0.0.1]:2222', '-f', path])).stdout;
    for (const key of [...trust.hostKeys, ...trust.hostCertificateAuthorities]) t.true(found.includes(key.split(' ')[1]!), key);
    t.is(found.split('\n').filter((l) => l.startsWith('@cert-authority')).length, 2);
    // Without a set: exactly the two lines of before.
    t.is(renderKnownHosts(ssh).trim().split('\n').length, 2);
  });
});

// ---------------------------------------------------------------------------
// Storing the set from grants

/** A grant of DEVICE's whose ssh endpoint is HOST:PORT with HOSTKEY, and TRUST (omitted: none, as from an older broker). */
function grantOf(device: TestDevice, o: { now?: number; port?: number; username?: string; hostKey?: string; trust?: unknown }): CertificateGrantWire {
  const grant = device.grant({ now: o.now ?? Date.now() });
  return {
    ...grant,
    ssh: { ...grant.ssh, port: o.port ?? grant.ssh.port, username: o.username ?? grant.ssh.username, hostKey: o.hostKey ?? grant.ssh.hostKey },
    ...(o.trust === undefined ? {} : { trust: o.trust as TrustSetWire }),
  };
}

async function stateOf(dir: string): Promise<DeviceState> {
  return JSON.parse(await readFile(statePaths(dir).state, 'utf8')) as DeviceState;
}

test('ok/renewal stores the trust set, sends capabilities, and a malformed set later is refused with the previous kept', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const next = keyLine();
    const trust: TrustSetWire = { hostKeys: [formatPublicKey(device.hostKey.publicKey), next], hostCertificateAuthorities: [formatPublicKey(device.hostCa.publicKey)], apiPins: [PIN_A, PIN_B] };
    let answer: unknown = trust;
    const sent: RenewRequest[] = [];
    const api: ApiCall = async <T>(_o: unknown, _m: string, _p: string, body?: unknown) => {
      sent.push(body as RenewRequest);
      return grantOf(device, { trust: answer }) as T;
    };
    const renew = async () => renewCertificate({ enrollment: (await loadEnrollment(device.dir))!, broker: { url: 'https://127.0.0.1:9', pin: PIN_A }, timeoutMs: 1000, api, now: new Date() });
    const first = await renew();
    t.deepEqual(sent[0]!.capabilities, [AGENT_CAPABILITIES.trustSet]);
    t.is(first.trust.refused, undefined);
    t.deepEqual((await stateOf(device.dir)).trust, trust);
    t.true((await readFile(statePaths(device.dir).knownHosts, 'utf8')).includes(next.split(' ')[1]!), 'the next host key is in known_hosts');
    const status = await readAgentStatus(device.dir, []);
    t.deepEqual(status.trust, { hostKeys: 2, hostCertificateAuthorities: 1, apiPins: 2, fromBroker: true });

    const knownHosts = await readFile(statePaths(device.dir).knownHosts, 'utf8');
    answer = { ...trust, hostKeys: ['ssh-ed25519 AAAAnotakey'] };
    const serialBefore = (await stateOf(device.dir)).serial;
    const second = await renew();
    t.is(second.trust.refused?.code, 'TRUST_INVALID');
    const after = await stateOf(device.dir);
    t.not(after.serial, serialBefore, 'the certificate itself was renewed');
    t.deepEqual(after.trust, trust, 'the previous trust set is kept');
    t.is(await readFile(statePaths(device.dir).knownHosts, 'utf8'), knownHosts);

    // An older broker (no trust): exactly as before, ssh's key and CA alone.
    answer = undefined;
    await renew();
    t.is((await stateOf(device.dir)).trust, undefined);
    t.is((await readFile(statePaths(device.dir).knownHosts, 'utf8')).trim().split('\n').length, 2);
    t.deepEqual((await readAgentStatus(device.dir, [])).trust, { hostKeys: 1, hostCertificateAuthorities: 1, apiPins: 1, fromBroker: false });
    t.notRegex(formatAgentStatus(await readAgentStatus(device.dir, [])), /^trust:/m, 'no set, no row: the output of before');
  } finally {
    await device.close();
  }
});

test('fail/a state.json with a malformed trust set is STATE_INVALID', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const state = await stateOf(device.dir);
    await writeFile(statePaths(device.dir).state, JSON.stringify({ ...state, trust: { hostKeys: ['x'], hostCertificateAuthorities: [], apiPins: [] } }));
    const err = await t.throwsAsync(loadEnrollment(device.dir));
    t.is((err as AgentError).code, 'STATE_INVALID');
  } finally {
    await device.close();
  }
});

test('ok/agent: background renewals log trust_changed (counts, no keys) when the set changes, trust_refused for a malformed one, nothing when it is the same', async (t) => {
  const start = Date.UTC(2030, 0, 1);
  const device = await enrolledDevice({ now: start });
  const clock = new FakeClock(start);
  const transport = new FakeTransport();
  const log = memoryLogger();
  const next = keyLine();
  const answers: unknown[] = [
    { hostKeys: [formatPublicKey(device.hostKey.publicKey), next], hostCertificateAuthorities: [formatPublicKey(device.hostCa.publicKey)], apiPins: [PIN_A, PIN_B] },
    { hostKeys: [formatPublicKey(device.hostKey.publicKey), next], hostCertificateAuthorities: [formatPublicKey(device.hostCa.publicKey)], apiPins: [PIN_A, PIN_B] },
    { hostKeys: [next], hostCertificateAuthorities: [], apiPins: [] },
  ];
  const api: ApiCall = async <T>() => grantOf(device, { now: clock.now(), trust: answers.shift() }) as T;
  const config = parseAgentConfig({ stateDir: device.dir, services: {} });
  const agent = new Agent({ config, transport, logger: log, clock, random: () => 0.5, api });
  const done = agent.run();
  try {
    const renewals = async (n: number): Promise<void> => {
      await clock.advance(3600_000);
      await waitFor(async () => log.events('renewed').length >= n && agent.machine.state === 'connected', `renewal ${n}`, 5000);
    };
    await renewals(1);
    t.deepEqual(log.events('trust_changed').map((e) => [e.from, e.to]), [[
      { hostKeys: 1, hostCertificateAuthorities: 1, apiPins: 1 }, { hostKeys: 2, hostCertificateAuthorities: 1, apiPins: 2 },
    ]]);
    t.deepEqual(transport.specs.at(-1)!.acceptedHostKeys?.length, 2, 'the reconnection accepts both host keys');
    await renewals(2);
    t.is(log.events('trust_changed').length, 1, 'the same set again is no change');
    await renewals(3);
    t.deepEqual(log.events('trust_refused').map((e) => e.code), ['TRUST_INVALID']);
    t.is((await stateOf(device.dir)).trust?.hostKeys.length, 2, 'the previous set is kept');
    t.false(JSON.stringify(log.lines).includes(next.split(' ')[1]!), 'no key in the logs');
    t.regex(formatAgentStatus(await readAgentStatus(device.dir, [])), /^trust: +2 host keys, 1 host CA, 2 API pins$/m);
  } finally {
    agent.stop();
    await done;
    await device.close();
  }
});

// ---------------------------------------------------------------------------
// Capabilities and an older broker

/** What a broker before 0.5 answers: its strict schemas, without the capabilities field. */
const OLDER_ENROLL = z.strictObject({ token: z.string(), publicKey: z.string(), name: z.string().optional(), hardwareSerial: z.string().optional() });
const OLDER_RENEW = z.strictObject({ deviceId: z.string(), timestamp: z.number(), nonce: z.string(), newPublicKey: z.string().optional(), signature: z.string(), newKeySignature: z.string().optional() });

function olderBroker<T>(schema: z.ZodType, body: unknown, answer: () => T): T {
  try {
    parseWith(schema, body);
  } catch (err) {
    throw new ApiError('BAD_REQUEST', (err as Error).message, 400);
  }
  return answer();
}

test('ok/an older broker refuses capabilities: enrollment retries once without them, and renewal then leaves them out', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    await withTempDir(async (dir) => {
      const url = 'https://older-broker.invalid:8443';
      const stateDir = join(dir, 'state');
      const sent: Array<{ path: string; body: EnrollRequest | RenewRequest }> = [];
      let serial = 500n;
      // Certifies whichever key the request is for: the enrolling one, then the enrolled one.
      const grantFor = (publicKey: PublicKey): CertificateGrantWire => {
        const cert = signDeviceCert({ ca: device.ca, publicKey, deviceId: device.deviceId, ports: device.ports, serial: ++serial, now: new Date() });
        return { ...device.grant({ now: Date.now() }), certificate: formatCertificate(cert), serial: cert.serial.toString() };
      };
      const api: ApiCall = async <T>(_o: unknown, _m: string, path: string, body?: unknown) => {
        sent.push({ path, body: body as EnrollRequest });
        if (path === '/v1/enroll') return olderBroker(OLDER_ENROLL, body, () => grantFor(parsePublicKey((body as EnrollRequest).publicKey)) as T);
        return olderBroker(OLDER_RENEW, body, async () => grantFor((await loadEnrollment(stateDir))!.key.publicKey) as T);
      };
      const enrollment = await enrollDevice({ stateDir, broker: { url }, token: 'ctt_whatever_token', api });
      t.deepEqual(sent.map((s) => [s.path, 'capabilities' in s.body]), [['/v1/enroll', true], ['/v1/enroll', false]]);
      t.is(enrollment.state.trust, undefined, 'an older broker: no trust set');
      t.true(brokerRefusedCapabilities(url));
      t.false(brokerRefusedCapabilities('https://another.invalid'));
      sent.length = 0;
      await renewCertificate({ enrollment, broker: { url }, timeoutMs: 1000, api, now: new Date() });
      t.deepEqual(sent.map((s) => [s.path, 'capabilities' in s.body]), [['/v1/renew', false]], 'remembered: no second refusal');
    });
  } finally {
    await device.close();
  }
});

test('fail/another BAD_REQUEST is not taken for an older broker: no retry', async (t) => {
  const calls: unknown[] = [];
  const api: ApiCall = async () => {
    calls.push(1);
    throw new ApiError('BAD_REQUEST', 'name: lowercase letters, digits and inner hyphens (a DNS label)', 400);
  };
  await withTempDir(async (dir) => {
    const err = await t.throwsAsync(enrollDevice({ stateDir: join(dir, 's'), broker: { url: 'https://x.invalid' }, token: 'ctt_whatever_token', api }));
    t.is((err as AgentError).code, 'BAD_REQUEST');
    t.is(calls.length, 1);
  });
});

// ---------------------------------------------------------------------------
// API pins, against the broker's real TLS port

test('ok/API: a pin from the trust set is accepted beside the configured one; neither is PIN_MISMATCH', async (t) => {
  await withBroker(async (b) => {
    const base = { baseUrl: b.broker.apiUrl, timeoutMs: 5000 };
    t.is((await apiRequest<{ status: string }>({ ...base, pin: PIN_A, pins: [PIN_B, b.init.apiPin] }, 'GET', '/healthz')).status, 'ok');
    const err = await t.throwsAsync(apiRequest({ ...base, pin: PIN_A, pins: [PIN_B] }, 'GET', '/healthz'));
    t.is((err as ApiError).code, 'PIN_MISMATCH');
    // A device whose configured pin is the old TLS key renews through the pin its stored set holds.
    await withTempDir(async (dir) => {
      const stateDir = join(dir, 'state');
      await enrollDevice({ stateDir, broker: { url: b.broker.apiUrl, pin: b.init.apiPin }, token: await mintToken(b) });
      const stale = { url: b.broker.apiUrl, pin: PIN_A };
      // As an older broker left it: no set (this broker sent one, naming its pin).
      const { trust: given, ...state } = await stateOf(stateDir);
      t.deepEqual(given?.apiPins, [b.init.apiPin]);
      await writeFile(statePaths(stateDir).state, JSON.stringify(state));
      const refused = await t.throwsAsync(renewCertificate({ enrollment: (await loadEnrollment(stateDir))!, broker: stale, timeoutMs: 5000, api: apiRequest, now: new Date() }));
      t.is((refused as ApiError).code, 'PIN_MISMATCH', 'without a set: the configured pin alone');
      const trust: TrustSetWire = { hostKeys: [state.ssh.hostKey], hostCertificateAuthorities: [state.ssh.hostCertificateAuthority], apiPins: [PIN_A, b.init.apiPin] };
      await writeFile(statePaths(stateDir).state, JSON.stringify({ ...state, trust }));
      const renewed = await renewCertificate({ enrollment: (await loadEnrollment(stateDir))!, broker: stale, timeoutMs: 5000, api: apiRequest, now: new Date() });
      t.regex(renewed.grant.serial, /^\d+$/);
    });
  });
});

// ---------------------------------------------------------------------------
// Real SSH: both transports accept any member, refuse what is not one.

const TRANSPORTS: Transport[] = [createSsh2Transport(), createOpensshTransport()];

interface SshdRig {
  readonly sshd: RunningSshd;
  readonly device: TestDevice;
  readonly block: { first: number; last: number };
  readonly svc: DeviceService;
  readonly hostKey: string;
}

/** A real sshd that trusts DEVICE's CA, permits DEVICE's block to user root, optionally presents a host certificate from HOSTCA (a key file). */
async function withSshd(fn: (r: SshdRig) => Promise<void>, options: { hostCaPath?: string } = {}): Promise<void> {
  const block = await freePool(2);
  const device = await enrolledDevice({ now: Date.now(), ports: block });
  const svc = await startDeviceService('ssh:');
  let sshd: RunningSshd | undefined;
  try {
    const caPub = join(device.dir, 'user_ca.pub');
    await writeFile(caPub, `${formatPublicKey(device.ca.publicKey)}\n`);
    const principals = join(device.dir, 'principals');
    await writeFile(principals, `restrict,port-forwarding,permitlisten="127.0.0.1:${block.first}",permitlisten="127.0.0.1:${block.last}" ports-${block.first}-${block.last}\n`);
    const config = [`TrustedUserCAKeys ${caPub}`, `AuthorizedPrincipalsFile ${principals}`, 'AuthorizedKeysFile none', 'AllowTcpForwarding remote', 'PermitTTY no'];
    let hostKeyPath: string | undefined;
    if (options.hostCaPath) {
      hostKeyPath = join(device.dir, 'host_key');
      await sshKeygenOk(['-q', '-t', 'ed25519', '-N', '', '-f', hostKeyPath]);
      await sshKeygenOk(['-q', '-s', options.hostCaPath, '-I', 'broker', '-h', '-n', '127.0.0.1', `${hostKeyPath}.pub`]);
      config.push(`HostCertificate ${hostKeyPath}-cert.pub`);
    }
    sshd = await startSshd({ config, hostKeyPath });
    const hostKey = formatPublicKey(parsePublicKey((await sshKeygenOk(['-y', '-f', sshd.hostKeyPath])).stdout));
    await fn({ sshd, device, block, svc, hostKey });
  } finally {
    await sshd?.stop();
    await svc.close();
    await device.close();
  }
}

/** Writes GRANT into the rig's state directory as a renewal would, and opens a tunnel with TRANSPORT from it. */
async function openFrom(r: SshdRig, transport: Transport, grant: CertificateGrantWire) {
  const paths = statePaths(r.device.dir);
  const state = await stateOf(r.device.dir);
  await writeGrant(paths, grant, state.broker, { enrolledAt: state.enrolledAt, renewedAt: null });
  const enrollment = (await loadEnrollment(r.device.dir))!;
  const config = parseAgentConfig({ stateDir: r.device.dir, connectTimeoutSeconds: 5 });
  return transport.open(tunnelSpecFor(config, enrollment, [{ name: 'ssh', remotePort: r.block.first, localHost: '127.0.0.1', localPort: r.svc.port }]));
}

async function outcome(promise: Promise<{ close(): Promise<void> }>): Promise<string> {
  try {
    await (await promise).close();
    return 'CONNECTED';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

for (const transport of TRANSPORTS) {
  test(`${transport.name}: ok/real sshd: a host key that is only in the trust set (not ssh.hostKey) is accepted; one in neither is HOST_KEY_MISMATCH`, async (t) => {
    await withSshd(async (r) => {
      const old = formatPublicKey(r.device.hostKey.publicKey);
      const ca = formatPublicKey(r.device.hostCa.publicKey);
      const base = { port: r.sshd.port, username: 'root', hostKey: old };
      t.is(await outcome(openFrom(r, transport, grantOf(r.device, base))), 'HOST_KEY_MISMATCH', 'without a set: ssh.hostKey alone');
      const withNext = grantOf(r.device, { ...base, trust: { hostKeys: [old, r.hostKey], hostCertificateAuthorities: [ca], apiPins: [] } });
      const tunnel = await openFrom(r, transport, withNext);
      try {
        await answersWithin(r.block.first, 'x', 'ssh:x');
      } finally {
        await tunnel.close();
      }
      const without = grantOf(r.device, { ...base, trust: { hostKeys: [old, keyLine()], hostCertificateAuthorities: [ca], apiPins: [] } });
      t.is(await outcome(openFrom(r, transport, without)), 'HOST_KEY_MISMATCH');
    });
  });
}

test('openssh: ok/real sshd with a host certificate: a host CA only in the trust set is accepted through @cert-authority; none of them is HOST_KEY_MISMATCH', async (t) => {
  await withTempDir(async (dir) => {
    const nextCa = join(dir, 'next_host_ca');
    await sshKeygenOk(['-q', '-t', 'ed25519', '-N', '', '-f', nextCa]);
    const nextCaLine = (await readFile(`${nextCa}.pub`, 'utf8')).trim();
    await withSshd(async (r) => {
      const transport = createOpensshTransport();
      // No plain key line matches the sshd's key: only the CA can vouch for it.
      const unrelated = keyLine();
      const current = formatPublicKey(r.device.hostCa.publicKey);
      const base = { port: r.sshd.port, username: 'root', hostKey: unrelated };
      const withNextCa = grantOf(r.device, { ...base, trust: { hostKeys: [unrelated], hostCertificateAuthorities: [current, nextCaLine], apiPins: [] } });
      const tunnel = await openFrom(r, transport, withNextCa);
      try {
        await answersWithin(r.block.first, 'ca', 'ssh:ca');
      } finally {
        await tunnel.close();
      }
      t.is(await outcome(openFrom(r, transport, grantOf(r.device, base))), 'HOST_KEY_MISMATCH', 'ssh.hostCertificateAuthority alone does not vouch');
    }, { hostCaPath: nextCa });
  });
});

// ---------------------------------------------------------------------------
// Recovery: a device that slept through a host-key rotation.

for (const transport of TRANSPORTS) {
  test(`${transport.name}: ok/recovery: real sshd presents a key outside the stored set -> one renewal over the API brings it -> connected; the unknown key is never accepted without it`, async (t) => {
    await withSshd(async (r) => {
      const old = formatPublicKey(r.device.hostKey.publicKey);
      const ca = formatPublicKey(r.device.hostCa.publicKey);
      // Before the rotation: the set names the old key alone.
      const paths = statePaths(r.device.dir);
      const state = await stateOf(r.device.dir);
      const stale: TrustSetWire = { hostKeys: [old], hostCertificateAuthorities: [ca], apiPins: [] };
      await writeGrant(paths, grantOf(r.device, { port: r.sshd.port, username: 'root', hostKey: old, trust: stale }), state.broker, { enrolledAt: state.enrolledAt, renewedAt: null });

      let rotated = false;
      const renewals: RenewRequest[] = [];
      const api: ApiCall = async <T>(_o: unknown, method: string, path: string, body?: unknown) => {
        if (method !== 'POST' || path !== '/v1/renew') throw new Error(`unexpected ${method} ${path}`);
        renewals.push(body as RenewRequest);
        const trust = rotated ? { hostKeys: [r.hostKey], hostCertificateAuthorities: [ca], apiPins: [] } : stale;
        return grantOf(r.device, { port: r.sshd.port, username: 'root', hostKey: rotated ? r.hostKey : old, trust }) as T;
      };
      const log = memoryLogger();
      const config = parseAgentConfig({
        stateDir: r.device.dir, transport: transport.name, services: { ssh: `127.0.0.1:${r.svc.port}`, http: false },
        backoff: { baseMs: 100, capMs: 400, minMs: 50 }, connectTimeoutSeconds: 5, keepalive: { intervalSeconds: 2, countMax: 2 },
      });
      const agent = new Agent({ config, transport, logger: log, api });
      const done = agent.run();
      try {
        // The broker has not told anyone yet (its renewal still answers the old set): never connected.
        await waitFor(async () => renewals.length >= 2, 'two renewals after mismatches', 30_000);
        t.false(log.events('state').some((e) => e.to === 'connected'), 'a key outside the set is never accepted');
        t.is(agent.lastError?.code, 'HOST_KEY_MISMATCH');
        t.true(log.events('state').some((e) => e.to === 'backoff'), 'a renewal that brings nothing new backs off');
        // Rotated: the next renewal brings the new key, and the agent connects with it.
        rotated = true;
        await waitFor(async () => agent.machine.state === 'connected', 'connected after the renewal', 30_000);
        await answersWithin(r.block.first, 'back', 'ssh:back');
        const changed = log.events('trust_changed');
        t.is(changed.length, 1);
        t.deepEqual(changed[0]!.to, { hostKeys: 1, hostCertificateAuthorities: 1, apiPins: 1 });
        t.false(JSON.stringify(log.lines).includes(r.hostKey.split(' ')[1]!), 'no key in the logs');
        t.deepEqual((await stateOf(r.device.dir)).trust?.hostKeys, [r.hostKey]);
        t.true(renewals.every((req) => req.capabilities?.includes(AGENT_CAPABILITIES.trustSet)));
      } finally {
        agent.stop();
        await done;
      }
    });
  });
}

test('ssh2: ok/embedded gateway: a trust set naming the gateway key second is accepted', async (t) => {
  const env = await startGatewayEnv();
  const svc = await startDeviceService('ssh:');
  try {
    const block = await freePool(2);
    const { key, cert } = env.deviceCert({ deviceId: 'dev_a', block });
    const transport = createSsh2Transport();
    const spec = {
      host: '127.0.0.1', port: env.port, username: 'tunnel', key, keyPath: '', certificateLine: formatCertificate(cert), certificatePath: '',
      hostKey: generateKeyPair().publicKey, knownHostsPath: '', keepaliveIntervalMs: 15_000, keepaliveCountMax: 3, connectTimeoutMs: 5000,
      forwards: [{ name: 'ssh', remotePort: block.first, localHost: '127.0.0.1', localPort: svc.port }],
    };
    t.is(await outcome(transport.open(spec)), 'HOST_KEY_MISMATCH');
    t.is(await outcome(transport.open({ ...spec, acceptedHostKeys: [spec.hostKey, env.hostKey.publicKey] })), 'CONNECTED');
  } finally {
    await env.close();
    await svc.close();
  }
});
