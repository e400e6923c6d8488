/**
 * POST /v1/devices/:ref/operator-certificate through a real broker, and what
 * the certificate it issues may do at the broker's own gateway with the real
 * `ssh` client: reach its device's ports (by 127.0.0.1:<port> or by the
 * device's name), nothing of another device, nothing once expired.
 */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type ApiClientOptions, ApiError, type OperatorCertificateResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, type KeyPair } from '../../../ca/index.js';
import { makeOpensshKey, sshKeygenOk } from '../../../testkit/openssh.js';
import { spawnSsh, sshArgs, writeClientIdentity, writeKnownHosts } from '../../../testkit/ssh-client.js';
import { withFleet, type Fleet } from '../../../testkit/operator-fixture.js';

async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ApiError) return err.code;
    throw err;
  }
  return 'NONE';
}

function certify(f: Fleet, who: ApiClientOptions, ref: string, key: KeyPair = generateKeyPair(), body?: Record<string, unknown>): Promise<OperatorCertificateResponse> {
  return f.b.call<OperatorCertificateResponse>(who, 'POST', `/v1/devices/${encodeURIComponent(ref)}/operator-certificate`, body ?? { publicKey: formatPublicKey(key.publicKey) });
}

type AuditItem = { actor: string; action: string; target: string | null; outcome: string; details: Record<string, unknown> };
async function audits(f: Fleet, action: string): Promise<AuditItem[]> {
  return (await f.b.call<{ items: AuditItem[] }>(f.b.admin, 'GET', `/v1/audit?limit=1000&action=${action}`)).items;
}

/** `ssh -W TARGET` to the broker with an operator certificate: resolves with [exit code, stdout]. */
async function reach(f: Fleet, key: KeyPair, certificate: string, target: string, input = 'GET /echo HTTP/1.0\r\nHost: x\r\n\r\n'): Promise<[number, string, string]> {
  const identity = await writeClientIdentity(f.b.dir, `op-${Math.random().toString(36).slice(2)}`, key, parseCertificateLine(certificate));
  const knownHosts = await writeKnownHosts(join(f.b.dir, 'op_known_hosts'), '127.0.0.1', f.b.broker.sshPort, parsePublicKey(f.b.broker.core.ssh.hostKey));
  const ssh = spawnSsh([...sshArgs({ port: f.b.broker.sshPort, knownHosts, identity, user: 'operator' }), '-W', target]);
  ssh.child.stdin.end(input);
  const code = await ssh.exited;
  return [code, ssh.stdout().toString(), ssh.stderr()];
}

test('ok/certificate for an online device: reach-A-B, operator key id, minutes, recorded and audited', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const operator = await f.b.apiKey('operator');
    const key = generateKeyPair();
    const res = await certify(f, operator, 'kiosk-a', key);
    const { first, last } = dev.grant.ports;
    t.is(res.principal, `reach-${first}-${last}`);
    t.deepEqual(res.device, { id: dev.grant.deviceId, name: 'kiosk-a', ports: { first, last }, forwardedPorts: [first + 1] });
    t.like(res.ssh, { host: '127.0.0.1', port: f.b.broker.sshPort, username: 'operator', hostKey: f.b.broker.core.ssh.hostKey });
    const cert = parseCertificateLine(res.certificate);
    t.true(cert.publicKey.equals(key.publicKey));
    t.is(cert.keyId, `operator:test-operator:device:${dev.grant.deviceId}`);
    t.deepEqual(Object.keys(cert.extensions), ['permit-port-forwarding']);
    const minutes = (Date.parse(res.validBefore) - Date.now()) / 60_000;
    t.true(minutes > 9 && minutes <= 10, `valid for ${minutes} min`);
    // ssh-keygen reads it as we do.
    const path = join(f.b.dir, 'op-cert.pub');
    await writeFile(path, `${res.certificate}\n`);
    t.regex((await sshKeygenOk(['-L', '-f', path])).stdout, new RegExp(`Principals: \\n\\s+reach-${first}-${last}`));
    // Recorded as an operator certificate of the device: revoking the device revokes it too.
    t.like(await f.b.broker.store.findCertificate(BigInt(res.serial)), { kind: 'operator', deviceId: dev.grant.deviceId, principal: res.principal, revokedAt: null });
    const [event] = await audits(f, 'operator.certificate');
    t.like(event, { action: 'operator.certificate', target: dev.grant.deviceId, outcome: 'ok' });
    t.regex(event!.actor, /^apikey:key_/);
    t.like(event!.details, { name: 'kiosk-a', operator: 'test-operator', serial: res.serial });
    // By id as well as by name; admins too.
    t.is((await certify(f, f.b.admin, dev.grant.deviceId)).device.name, 'kiosk-a');
  }));

test('fail/refusals: unknown, revoked, offline (never connected, then since), roles, keys', (t) =>
  withFleet(async (f) => {
    const operator = await f.b.apiKey('operator');
    t.is(await refusal(certify(f, operator, 'nope')), 'DEVICE_UNKNOWN');

    const idle = await f.enroll('kiosk-idle');
    const err = await certify(f, operator, 'kiosk-idle').catch((e: unknown) => e as ApiError);
    t.is((err as ApiError).code, 'DEVICE_OFFLINE');
    t.is((err as ApiError).status, 502);
    t.regex((err as ApiError).message, /never connected/);
    await f.connect(idle);
    await f.disconnect(idle);
    const since = (await certify(f, operator, 'kiosk-idle').catch((e: unknown) => e as ApiError)) as ApiError;
    t.is(since.code, 'DEVICE_OFFLINE');
    t.regex(since.message, /offline since \d{4}-\d\d-\d\dT/);

    await f.enroll('kiosk-gone', { connect: true });
    await f.b.call(f.b.admin, 'POST', '/v1/devices/kiosk-gone/revoke', { reason: 'stolen' });
    t.is(await refusal(certify(f, operator, 'kiosk-gone')), 'DEVICE_REVOKED');

    await f.enroll('kiosk-on', { connect: true });
    t.is(await refusal(certify(f, await f.b.apiKey('provisioner'), 'kiosk-on')), 'FORBIDDEN');
    t.is(await refusal(certify(f, f.b.anonymous, 'kiosk-on')), 'UNAUTHENTICATED');
    const rsa = await makeOpensshKey(f.b.dir, 'rsa-op', 'rsa');
    t.is(await refusal(certify(f, operator, 'kiosk-on', undefined, { publicKey: rsa.publicKeyLine })), 'KEY_UNSUPPORTED');
    t.is(await refusal(certify(f, operator, 'kiosk-on', undefined, { publicKey: 'ssh-ed25519 AAAA' })), 'KEY_INVALID');
    t.is(await refusal(certify(f, operator, 'kiosk-on', undefined, { publicKey: formatPublicKey(generateKeyPair().publicKey), ttl: 3600 })), 'BAD_REQUEST');

    // Every refusal with a device is audited with its code.
    const outcomes = (await audits(f, 'operator.certificate')).map((e) => e.outcome);
    for (const code of ['DEVICE_UNKNOWN', 'DEVICE_OFFLINE', 'DEVICE_REVOKED', 'KEY_UNSUPPORTED', 'KEY_INVALID']) t.true(outcomes.includes(code), code);
  }));

test('ok/revoking the device revokes its operator certificates (the KRL lists them)', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-r', { connect: true });
    const res = await certify(f, await f.b.apiKey('operator'), 'kiosk-r');
    const revoked = await f.b.call<{ certificatesRevoked: number }>(f.b.admin, 'POST', '/v1/devices/kiosk-r/revoke', {});
    t.is(revoked.certificatesRevoked, 2);
    t.true(f.b.broker.revocations.isRevoked({ serial: BigInt(res.serial), keyId: '' }));
  }));

test('gateway: the certificate reaches its device by port or by name; another device and expiry are refused, all audited', (t) =>
  withFleet(async (f) => {
    const a = await f.enroll('kiosk-a', { connect: true });
    const b = await f.enroll('kiosk-b', { connect: true });
    const operator = await f.b.apiKey('operator');
    const key = generateKeyPair();
    const res = await certify(f, operator, 'kiosk-a', key);
    const httpA = a.grant.ports.first + 1;
    const httpB = b.grant.ports.first + 1;

    const [okCode, okOut, okErr] = await reach(f, key, res.certificate, `127.0.0.1:${httpA}`);
    t.is(okCode, 0, okErr);
    t.regex(okOut, /"device":"kiosk-a"/);
    // The device name as the target host: :80 is its http slot (and :22 would be its ssh slot).
    const [nameCode, nameOut] = await reach(f, key, res.certificate, 'kiosk-a:80');
    t.is(nameCode, 0);
    t.regex(nameOut, /"device":"kiosk-a"/);

    // A certificate for device A used to reach device B: by port, by name.
    const [byPort, byPortOut] = await reach(f, key, res.certificate, `127.0.0.1:${httpB}`);
    t.is(byPort, 255);
    t.is(byPortOut, '');
    const [byName, byNameOut] = await reach(f, key, res.certificate, 'kiosk-b:80');
    t.is(byName, 255);
    t.is(byNameOut, '');
    t.is((await reach(f, key, res.certificate, 'no-such-device:80'))[0], 255);
    t.is(b.http!.requests.length, 0, 'device B saw nothing');

    const refused = (await audits(f, 'ssh.channel')).map((e) => e.details.reason);
    t.deepEqual(refused.sort(), ['DEVICE_UNKNOWN', 'OTHER_DEVICE', 'PORT_NOT_OWNED']);
    const reached = await audits(f, 'ssh.reach');
    t.is(reached.length, 2);
    for (const e of reached) {
      t.like(e, { actor: 'operator:test-operator', target: a.grant.deviceId, outcome: 'allowed' });
      t.like(e.details, { serial: res.serial, keyId: `operator:test-operator:device:${a.grant.deviceId}`, port: httpA });
    }

    // Expired: issued by an API node whose clock is 11 minutes behind the SSH side's.
    const apiClock = f.b.broker.core.clock;
    (f.b.broker.core as { clock: () => Date }).clock = () => new Date(Date.now() - 11 * 60_000);
    const stale = await certify(f, operator, 'kiosk-a', key);
    (f.b.broker.core as { clock: () => Date }).clock = apiClock;
    const [expiredCode, , expiredErr] = await reach(f, key, stale.certificate, `127.0.0.1:${httpA}`);
    t.is(expiredCode, 255);
    t.regex(expiredErr, /Permission denied/);
    t.true((await audits(f, 'ssh.auth')).some((e) => e.details.reason === 'CERT_EXPIRED'));
  }));

test('ok/OpenSSH mode: presence is unknown, so a device is not refused as offline', (t) =>
  withFleet(
    async (f) => {
      await f.enroll('kiosk-o');
      const res = await certify(f, await f.b.apiKey('operator'), 'kiosk-o');
      t.is(res.device.forwardedPorts, null);
      t.is(res.ssh.username, 'operator');
    },
    { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0' } } },
  ));
