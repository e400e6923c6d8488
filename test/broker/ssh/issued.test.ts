/**
 * The gateway's store check at login (broker/ssh/issued.ts): the decision,
 * table-driven, then the embedded gateway with an injected lookup and the
 * real `ssh` client: a lookup that throws refuses (fail closed), a login
 * whose connection closes while its lookup is pending is never accepted,
 * and the session cap stays exact across the asynchronous lookup. The
 * attacks against a real broker are in issued-attacks.test.ts.
 */
import test from 'ava';
import { generateKeyPair, signDeviceCert, signOperatorCert, type Certificate } from '../../../ca/index.js';
import { checkDeviceCertificate, checkIssued, checkOperatorCertificate, type Identity, type IssuedCertificate } from '../../../broker/ssh/index.js';
import { freePortBlock, issuedRecord, startGatewayEnv, type GatewayEnv, type GatewayEnvOptions } from '../../../testkit/gateway.js';
import { spawnSsh, waitFor, type SshProcess } from '../../../testkit/ssh-client.js';

// ---------------------------------------------------------------------------
// checkIssued, table-driven

const ca = generateKeyPair();
const key = generateKeyPair();
const OWN = { first: 20000, last: 20001 };
const OTHER = { first: 20002, last: 20003 };
const NOW = new Date();
const deviceCert = signDeviceCert({ ca, publicKey: key.publicKey, deviceId: 'dev_a', ports: OWN, serial: 42n, now: NOW });
const operatorCert = signOperatorCert({ ca, publicKey: key.publicKey, operator: 'alice', deviceId: 'dev_a', ports: OWN, serial: 43n, now: NOW });

function identityOf(cert: Certificate): Identity {
  const deps = { trustedCaKeys: [ca.publicKey], isRevoked: () => false };
  const check = cert.keyId.startsWith('operator:') ? checkOperatorCertificate(cert, NOW, deps) : checkDeviceCertificate(cert, NOW, deps);
  if (!check.ok) throw new Error(check.reason);
  return check.identity;
}

const DEVICE = identityOf(deviceCert);
const OPERATOR = identityOf(operatorCert);
const later = (date: Date, ms: number): Date => new Date(date.getTime() + ms);
const asIssued = (cert: Certificate, over: Parameters<typeof issuedRecord>[1] = {}): IssuedCertificate => issuedRecord(cert, over);
const activeOn = (block: { first: number; last: number } | null, status = 'active', id = 'dev_a') => ({ id, status, portFirst: block?.first ?? null, portLast: block?.last ?? null });

const cases: [name: string, identity: Identity, issued: IssuedCertificate | null, expected: string][] = [
  ['ok/device-as-issued', DEVICE, asIssued(deviceCert), 'allow'],
  ['ok/operator-as-issued', OPERATOR, asIssued(operatorCert), 'allow'],
  ['fail/never-issued', DEVICE, null, 'SERIAL_UNKNOWN'],
  ['fail/issued-to-another-device', DEVICE, asIssued(deviceCert, { certificate: { deviceId: 'dev_b' } }), 'SERIAL_OTHER_DEVICE'],
  ['fail/issued-for-another-key', DEVICE, asIssued(deviceCert, { certificate: { keyFingerprint: 'SHA256:another' } }), 'SERIAL_OTHER_DEVICE'],
  ['fail/issued-with-another-key-id', DEVICE, asIssued(deviceCert, { certificate: { keyId: 'device:dev_b' } }), 'SERIAL_OTHER_DEVICE'],
  ['fail/operator-serial-as-device', DEVICE, asIssued(deviceCert, { certificate: { kind: 'operator' } }), 'SERIAL_OTHER_DEVICE'],
  ['fail/device-serial-as-operator', OPERATOR, asIssued(operatorCert, { certificate: { kind: 'device' } }), 'SERIAL_OTHER_DEVICE'],
  ['fail/issued-for-another-block', DEVICE, asIssued(deviceCert, { certificate: { principal: 'ports-20002-20003' } }), 'BLOCK_NOT_CURRENT'],
  ['fail/operator-issued-for-another-block', OPERATOR, asIssued(operatorCert, { certificate: { principal: 'reach-20002-20003' } }), 'BLOCK_NOT_CURRENT'],
  ['fail/validity-extended', DEVICE, asIssued(deviceCert, { certificate: { validBefore: later(new Date(Number(deviceCert.validBefore) * 1000), -3600_000) } }), 'VALIDITY_NOT_AS_ISSUED'],
  ['fail/validity-moved', DEVICE, asIssued(deviceCert, { certificate: { validAfter: later(new Date(Number(deviceCert.validAfter) * 1000), 1000) } }), 'VALIDITY_NOT_AS_ISSUED'],
  ['fail/serial-revoked', DEVICE, asIssued(deviceCert, { certificate: { revokedAt: NOW } }), 'SERIAL_REVOKED'],
  ['fail/operator-serial-revoked', OPERATOR, asIssued(operatorCert, { certificate: { revokedAt: NOW } }), 'SERIAL_REVOKED'],
  ['fail/device-revoked', DEVICE, asIssued(deviceCert, { device: activeOn(OWN, 'revoked') }), 'DEVICE_NOT_ACTIVE'],
  ['fail/operator-device-revoked', OPERATOR, asIssued(operatorCert, { device: activeOn(OWN, 'revoked') }), 'DEVICE_NOT_ACTIVE'],
  ['fail/device-gone', DEVICE, asIssued(deviceCert, { device: null }), 'DEVICE_NOT_ACTIVE'],
  ['fail/device-status-unknown', DEVICE, asIssued(deviceCert, { device: activeOn(OWN, 'suspended') }), 'DEVICE_NOT_ACTIVE'],
  ['fail/device-row-of-another-id', DEVICE, asIssued(deviceCert, { device: activeOn(OWN, 'active', 'dev_b') }), 'DEVICE_NOT_ACTIVE'],
  ['fail/device-holds-another-block-now', DEVICE, asIssued(deviceCert, { device: activeOn(OTHER) }), 'BLOCK_NOT_CURRENT'],
  ['fail/device-holds-no-block', DEVICE, asIssued(deviceCert, { device: activeOn(null) }), 'BLOCK_NOT_CURRENT'],
  ['fail/operator-device-holds-another-block-now', OPERATOR, asIssued(operatorCert, { device: activeOn(OTHER) }), 'BLOCK_NOT_CURRENT'],
];

for (const [name, identity, issued, expected] of cases) {
  test(`checkIssued ${name}`, (t) => {
    const d = checkIssued(identity, issued);
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

// ---------------------------------------------------------------------------
// The gateway with an injected lookup, the real ssh client as the device

/** A lookup whose answers the test releases: each call waits until release() (or fail()). */
function heldLookup(answer: (serial: bigint) => IssuedCertificate | null) {
  const calls: bigint[] = [];
  let open = false;
  let failure: Error | undefined;
  const waiting: Array<() => void> = [];
  const lookup = async (serial: bigint): Promise<IssuedCertificate | null> => {
    calls.push(serial);
    if (!open) await new Promise<void>((resolve) => waiting.push(resolve));
    if (failure) throw failure;
    return answer(serial);
  };
  const releaseAll = (): void => {
    open = true;
    for (const resolve of waiting.splice(0)) resolve();
  };
  return { lookup, calls, release: releaseAll, fail: (err: Error) => ((failure = err), releaseAll()) };
}

async function withEnv(options: GatewayEnvOptions, fn: (env: GatewayEnv, started: SshProcess[]) => Promise<void>): Promise<void> {
  const env = await startGatewayEnv(options);
  const started: SshProcess[] = [];
  try {
    await fn(env, started);
  } finally {
    await Promise.all(started.map((p) => p.stop()));
    await env.close();
  }
}

/** `ssh -N` (with -R SPEC when given) with KEY and CERT. */
async function login(env: GatewayEnv, started: SshProcess[], name: string, k: typeof key, cert: Certificate, spec?: string): Promise<SshProcess> {
  const args = [...env.args(await env.identity(name, k, cert)), '-N', '-o', 'ExitOnForwardFailure=yes'];
  const ssh = spawnSsh(spec ? [...args, '-R', spec] : args);
  started.push(ssh);
  return ssh;
}

const errors = (env: GatewayEnv) => env.logs.filter((l) => l.level === 'error');

test.serial('gateway ok/issued: the lookup is asked for the serial, and an issued certificate binds its block', async (t) => {
  const issued = new Map<bigint, IssuedCertificate>();
  const calls: bigint[] = [];
  await withEnv({ lookupIssued: async (serial) => (calls.push(serial), issued.get(serial) ?? null) }, async (env, started) => {
    const block = await freePortBlock(2);
    const { key: k, cert } = env.deviceCert({ deviceId: 'dev-1', block });
    issued.set(cert.serial, issuedRecord(cert));
    await login(env, started, 'dev-1', k, cert, `127.0.0.1:${block.first}:127.0.0.1:9`);
    await waitFor(() => env.gateway.stats().forwardsActive === 1, 'the forward');
    t.deepEqual(calls, [cert.serial], 'one lookup, at the signed request only');
    t.deepEqual(env.gateway.stats().authFailures, {});
  });
});

test.serial('gateway fail/never-issued and fail/lookup-throws: refused, counted, audited; the throw is logged', async (t) => {
  let throwing = false;
  await withEnv({ lookupIssued: async () => { if (throwing) throw new Error('SQLITE_IOERR'); return null; } }, async (env, started) => {
    const block = await freePortBlock(2);
    const { key: k, cert } = env.deviceCert({ deviceId: 'dev-1', block });
    const unknown = await login(env, started, 'unknown', k, cert, `127.0.0.1:${block.first}:127.0.0.1:9`);
    t.is(await unknown.exited, 255);
    t.regex(unknown.stderr(), /Permission denied \(publickey\)/);
    throwing = true;
    const failing = await login(env, started, 'failing', k, cert, `127.0.0.1:${block.first}:127.0.0.1:9`);
    t.is(await failing.exited, 255);
    // (OpenSSH then offers the bare key too: NOT_A_CERTIFICATE, not counted here.)
    t.like(env.gateway.stats().authFailures, { SERIAL_UNKNOWN: 1, INTERNAL_ERROR: 1 });
    const refused = env.audits.filter((a) => a.action === 'ssh.auth' && a.outcome === 'refused' && a.details?.reason !== 'NOT_A_CERTIFICATE');
    t.deepEqual(refused.map((a) => a.details?.reason), ['SERIAL_UNKNOWN', 'INTERNAL_ERROR']);
    t.true(refused.every((a) => a.details?.serial === cert.serial.toString()), 'the claimed serial is recorded');
    t.deepEqual(errors(env).map((l) => l.msg), ['ssh certificate store check failed']);
    t.is(env.gateway.stats().tunnelsConnected, 0);
  });
});

test.serial('gateway closed-while-pending: a login whose connection closes during the lookup is never accepted, and nothing throws', async (t) => {
  for (const outcome of ['issued', 'refused', 'throws'] as const) {
    const certs = new Map<bigint, Certificate>();
    const held = heldLookup((serial) => (outcome === 'issued' ? issuedRecord(certs.get(serial)!) : null));
    await withEnv({ lookupIssued: held.lookup }, async (env, started) => {
      const block = await freePortBlock(2);
      const { key: k, cert } = env.deviceCert({ deviceId: 'dev-1', block });
      certs.set(cert.serial, cert);
      const ssh = await login(env, started, 'dev-1', k, cert, `127.0.0.1:${block.first}:127.0.0.1:9`);
      await waitFor(() => held.calls.length === 1, 'the lookup');
      ssh.child.kill('SIGKILL');
      await waitFor(() => env.gateway.stats().connections === 0, 'the gateway to see the connection close');
      if (outcome === 'throws') held.fail(new Error('SQLITE_BUSY'));
      else held.release();
      // Let the lookup's continuation run.
      await new Promise((resolve) => setTimeout(resolve, 100));
      t.deepEqual(env.gateway.sessions(), [], outcome);
      // Counted only when ctx.accept() is called: ssh2 was never told to accept on the closed connection.
      t.deepEqual(env.gateway.stats().signatureForms, { wrapped: 0, bare: 0 }, `${outcome}: never accepted`);
      t.is(env.gateway.stats().unauthenticated, 0, outcome);
      t.false(env.presence.some((p) => p.online), outcome);
      t.false(errors(env).some((l) => l.msg === 'ssh authentication failed'), `${outcome}: nothing threw`);
      const refusals = env.audits.filter((a) => a.action === 'ssh.auth').map((a) => a.details?.reason);
      t.deepEqual(refusals, { issued: [], refused: ['SERIAL_UNKNOWN'], throws: ['INTERNAL_ERROR'] }[outcome], `${outcome}: a refusal is still audited`);
    });
  }
});

test.serial('gateway login-grace: a lookup that hangs past the grace time drops the connection (AUTH_TIMEOUT); its late answer accepts nothing', async (t) => {
  const certs = new Map<bigint, Certificate>();
  const held = heldLookup((serial) => issuedRecord(certs.get(serial)!));
  await withEnv({ lookupIssued: held.lookup, limits: { authTimeoutMs: 1500 } }, async (env, started) => {
    const block = await freePortBlock(2);
    const { key: k, cert } = env.deviceCert({ deviceId: 'dev-1', block });
    certs.set(cert.serial, cert);
    const ssh = await login(env, started, 'dev-1', k, cert, `127.0.0.1:${block.first}:127.0.0.1:9`);
    t.is(await ssh.exited, 255);
    t.is(held.calls.length, 1);
    t.deepEqual(env.gateway.stats().authFailures, { AUTH_TIMEOUT: 1 });
    held.release();
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.deepEqual(env.gateway.sessions(), []);
    t.deepEqual(env.gateway.stats().signatureForms, { wrapped: 0, bare: 0 }, 'never accepted');
    t.deepEqual(errors(env), []);
  });
});

test.serial('gateway session cap: two logins of one device whose lookups finish together get one session (maxSessionsPerCertificate 1)', async (t) => {
  const certs = new Map<bigint, Certificate>();
  const held = heldLookup((serial) => issuedRecord(certs.get(serial)!));
  await withEnv({ lookupIssued: held.lookup, limits: { maxSessionsPerCertificate: 1 } }, async (env, started) => {
    const block = await freePortBlock(2);
    const k = generateKeyPair();
    const first = env.deviceCert({ deviceId: 'dev-1', block, key: k });
    const second = env.deviceCert({ deviceId: 'dev-1', block, key: k });
    certs.set(first.cert.serial, first.cert);
    certs.set(second.cert.serial, second.cert);
    const a = await login(env, started, 'a', k, first.cert);
    const b = await login(env, started, 'b', k, second.cert);
    await waitFor(() => held.calls.length === 2, 'both lookups pending');
    held.release();
    await waitFor(() => a.child.exitCode !== null || b.child.exitCode !== null, 'one login to be refused');
    t.is(env.gateway.sessions().length, 1);
    t.deepEqual(env.gateway.stats().authFailures, { TOO_MANY_SESSIONS: 1 });
  });
});
