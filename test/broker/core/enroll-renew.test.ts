import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError, type EnrollResponse, RENEW_NAMESPACE, renewMessage, type RenewResponse } from '../../../api/index.js';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair, parseCertificateLine, verifyCertificate, encodePrivateKey, type KeyPair } from '../../../ca/index.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';
import { sshKeygen, sshKeygenOk } from '../../../testkit/openssh.js';

async function mint(b: TestBroker, body: Record<string, unknown> = {}): Promise<string[]> {
  const res = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1, ...body });
  return res.tokens.map((t) => t.token);
}

async function enroll(b: TestBroker, token: string, key: KeyPair, extra: Record<string, unknown> = {}): Promise<EnrollResponse> {
  return b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(key.publicKey), ...extra });
}

async function refusal(t: { fail(msg: string): void }, promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ApiError) return err.code;
    throw err;
  }
  t.fail('expected the broker to refuse');
  return 'NONE';
}

test('ok/mint → enroll → renew → rotate → revoke → renewal refused', async (t) => {
  await withBroker(async (b) => {
    const [token] = await mint(b, { batch: 'line-7' });
    const key = generateKeyPair();
    const grant = await enroll(b, token!, key, { name: 'kiosk-1', hardwareSerial: 'SN-1' });
    t.regex(grant.deviceId, /^dev_[a-z2-7]{16}$/);
    t.is(grant.ports.last - grant.ports.first, 1);
    const pool = b.broker.core.config.ports;
    t.true(grant.ports.first >= pool.first && grant.ports.last <= pool.last);
    t.is(grant.ssh.port, b.broker.sshPort);
    t.true(new Date(grant.renewAfter) < new Date(grant.validBefore));

    // ssh-keygen reads the certificate and it names the allocated block.
    const certPath = join(b.dir, 'dev-cert.pub');
    await writeFile(certPath, `${grant.certificate}\n`);
    const listed = await sshKeygenOk(['-L', '-f', certPath]);
    t.regex(listed.stdout, new RegExp(`ports-${grant.ports.first}-${grant.ports.last}`));
    t.regex(listed.stdout, new RegExp(`Key ID: "device:${grant.deviceId}"`));
    const ca = await b.call<{ userCertificateAuthority: string }>(b.anonymous, 'GET', '/v1/ca');
    const caKey = (await import('../../../ca/index.js')).parsePublicKey(ca.userCertificateAuthority);
    verifyCertificate(parseCertificateLine(grant.certificate), { trustedCaKeys: [caKey], type: 'user', now: new Date(), principal: `ports-${grant.ports.first}-${grant.ports.last}` });

    const renewed = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key }));
    t.deepEqual(renewed.ports, grant.ports);
    t.not(renewed.serial, grant.serial);

    const newKey = generateKeyPair();
    const rotated = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key, newKey }));
    t.true(parseCertificateLine(rotated.certificate).publicKey.equals(newKey.publicKey));
    // The old key no longer renews; the new one does.
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key }))), 'SIGNATURE_INVALID');
    await b.call(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key: newKey }));

    const revoked = await b.call<{ alreadyRevoked: boolean; certificatesRevoked: number }>(b.admin, 'POST', `/v1/devices/kiosk-1/revoke`, { reason: 'stolen' });
    t.false(revoked.alreadyRevoked);
    // The new key's two: the rotation revoked the old key's two already.
    t.is(revoked.certificatesRevoked, 2);
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key: newKey }))), 'DEVICE_REVOKED');
    const again = await b.call<{ alreadyRevoked: boolean }>(b.admin, 'POST', `/v1/devices/${grant.deviceId}/revoke`, {});
    t.true(again.alreadyRevoked);

    // The KRL served and written lists the device's certificates.
    const krlPath = join(b.dir, 'served.krl');
    const krl = await b.call<Buffer>(b.anonymous, 'GET', '/v1/krl');
    await writeFile(krlPath, krl);
    const q = await sshKeygen(['-Q', '-f', krlPath, certPath]);
    t.is(q.code, 1);
    t.regex(q.stdout, /REVOKED/);

    const audit = await b.call<{ items: Array<{ action: string; outcome: string }> }>(b.admin, 'GET', '/v1/audit?limit=1000');
    const actions = audit.items.map((e) => `${e.action}:${e.outcome}`);
    for (const a of ['token.mint:ok', 'device.enroll:ok', 'device.renew:ok', 'device.rotate:ok', 'device.revoke:ok', 'device.renew:DEVICE_REVOKED']) t.true(actions.includes(a), a);
    // Secrets never reach the logs.
    t.false(b.logs.some((line) => line.includes(token!) || line.includes(b.init.adminKey)));
  });
});

test('ok/renewal signed by ssh-keygen -Y sign is accepted; replay, stale, other key refused', async (t) => {
  await withBroker(async (b) => {
    const key = generateKeyPair();
    const other = generateKeyPair();
    const grant = await enroll(b, (await mint(b))[0]!, key);
    const keyPath = join(b.dir, 'device_key');
    await writeFile(keyPath, encodePrivateKey(key), { mode: 0o600 });
    const fields = { deviceId: grant.deviceId, timestamp: Math.floor(Date.now() / 1000), nonce: 'bm9uY2Utb2YtdGhlLWRldmljZQ' };
    const msgPath = join(b.dir, 'renew.msg');
    await writeFile(msgPath, renewMessage(fields));
    await sshKeygenOk(['-Y', 'sign', '-f', keyPath, '-n', RENEW_NAMESPACE, msgPath]);
    const signature = (await import('node:fs/promises')).readFile(`${msgPath}.sig`, 'utf8');
    const body = { ...fields, signature: await signature };
    await b.call(b.anonymous, 'POST', '/v1/renew', body);
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', body)), 'REQUEST_REPLAYED');

    const stale = buildRenewRequest({ deviceId: grant.deviceId, key, now: new Date(Date.now() - 600_000) });
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', stale)), 'REQUEST_STALE');
    const future = buildRenewRequest({ deviceId: grant.deviceId, key, now: new Date(Date.now() + 600_000) });
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', future)), 'REQUEST_STALE');
    const wrongKey = buildRenewRequest({ deviceId: grant.deviceId, key: other });
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', wrongKey)), 'SIGNATURE_INVALID');
    // A signature over other fields than those sent.
    const tampered = { ...buildRenewRequest({ deviceId: grant.deviceId, key }), nonce: 'c29tZS1vdGhlci1ub25jZQ' };
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', tampered)), 'SIGNATURE_INVALID');
    // Another enrolled device's key cannot renew this device.
    await enroll(b, (await mint(b))[0]!, other);
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', wrongKey)), 'SIGNATURE_INVALID');
    t.is(await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: 'dev_aaaaaaaaaaaaaaaa', key }))), 'DEVICE_UNKNOWN');
  });
});

test('ok/expired certificate renews within the grace period, not beyond', async (t) => {
  await withBroker(async (b) => {
    const key = generateKeyPair();
    const grant = await enroll(b, (await mint(b))[0]!, key);
    const validity = new Date(grant.validBefore).getTime() - Date.now();
    // Ten days offline: the certificate expired, the grace period (30 days) has not.
    b.clock.advance(validity + 10 * 86400_000);
    const late = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key, now: b.clock.now() }));
    t.true(new Date(late.validBefore) > b.clock.now());
    // Then 31 days after that certificate expired.
    b.clock.advance(new Date(late.validBefore).getTime() - b.clock.now().getTime() + 31 * 86400_000);
    const code = await refusal(t, b.call(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key, now: b.clock.now() })));
    t.is(code, 'RENEWAL_GRACE_EXCEEDED');
  });
});

test('ok/tokens: used, expired, revoked, bound', async (t) => {
  await withBroker(async (b) => {
    const [used] = await mint(b);
    await enroll(b, used!, generateKeyPair());
    t.is(await refusal(t, enroll(b, used!, generateKeyPair())), 'TOKEN_USED');
    t.is(await refusal(t, enroll(b, 'cte_nonexistenttokenvalue000000000000000', generateKeyPair())), 'TOKEN_UNKNOWN');

    const [short] = await mint(b, { ttlSeconds: 60 });
    b.clock.advance(61_000);
    t.is(await refusal(t, enroll(b, short!, generateKeyPair())), 'TOKEN_EXPIRED');

    const batch = await mint(b, { count: 3, batch: 'b-1' });
    const revoked = await b.call<{ revoked: number }>(b.admin, 'POST', '/v1/tokens/revoke', { batch: 'b-1' });
    t.is(revoked.revoked, 3);
    t.is(await refusal(t, enroll(b, batch[0]!, generateKeyPair())), 'TOKEN_REVOKED');

    const [bound] = await mint(b, { bindNames: ['door-3'], bindSerials: ['SN-9'] });
    t.is(await refusal(t, enroll(b, bound!, generateKeyPair(), { name: 'door-4', hardwareSerial: 'SN-9' })), 'TOKEN_BINDING_MISMATCH');
    t.is(await refusal(t, enroll(b, bound!, generateKeyPair(), { hardwareSerial: 'SN-8' })), 'TOKEN_BINDING_MISMATCH');
    const ok = await enroll(b, bound!, generateKeyPair(), { hardwareSerial: 'SN-9' });
    t.is(ok.name, 'door-3');

    const listed = await b.call<{ items: Array<{ status: string; token?: string }> }>(b.admin, 'GET', '/v1/tokens?limit=100');
    t.true(listed.items.every((i) => i.token === undefined));
    t.deepEqual([...new Set(listed.items.map((i) => i.status))].sort(), ['expired', 'revoked', 'used']);
  });
});

test('ok/retry: the same token with the same key again answers the same device with a fresh certificate; anything else is TOKEN_USED', async (t) => {
  await withBroker(async (b) => {
    const key = generateKeyPair();
    const [token] = await mint(b);
    const first = await enroll(b, token!, key, { name: 'door-1', hardwareSerial: 'SN-1' });
    b.clock.advance(60_000);
    const again = await enroll(b, token!, key, { hardwareSerial: 'SN-1' });
    t.is(again.deviceId, first.deviceId);
    t.deepEqual(again.ports, first.ports);
    t.is(again.name, 'door-1');
    t.not(again.serial, first.serial);
    t.not(again.certificate, first.certificate);
    t.true(new Date(again.validBefore) > new Date(first.validBefore), 'certified from now');
    const audits = (await b.call<{ items: Array<{ outcome: string; details: Record<string, unknown> | null }> }>(b.admin, 'GET', '/v1/audit?action=device.enroll')).items;
    t.deepEqual(audits.map((a) => [a.outcome, a.details?.retry ?? false]).sort(), [['ok', false], ['ok', true]]);

    // Another key, another name, another serial: a used token.
    t.is(await refusal(t, enroll(b, token!, generateKeyPair())), 'TOKEN_USED');
    t.is(await refusal(t, enroll(b, token!, key, { name: 'door-2', hardwareSerial: 'SN-1' })), 'TOKEN_USED');
    t.is(await refusal(t, enroll(b, token!, key, { hardwareSerial: 'SN-2' })), 'TOKEN_USED');
    // Past tokens.enrollRetrySeconds (an hour).
    b.clock.advance(3600_000);
    t.is(await refusal(t, enroll(b, token!, key, { hardwareSerial: 'SN-1' })), 'TOKEN_USED');
    const devices = await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/devices');
    t.is(devices.items.length, 1);

    // A revoked device is not handed back.
    const other = generateKeyPair();
    const [second] = await mint(b);
    const made = await enroll(b, second!, other);
    await b.call(b.admin, 'POST', `/v1/devices/${made.deviceId}/revoke`, { reason: 'test' });
    t.is(await refusal(t, enroll(b, second!, other)), 'TOKEN_USED');
  });
});

test('ok/50 parallel enrollments with one token: exactly one wins', async (t) => {
  await withBroker(async (b) => {
    const [token] = await mint(b);
    const results = await Promise.allSettled(Array.from({ length: 50 }, () => enroll(b, token!, generateKeyPair())));
    const ok = results.filter((r) => r.status === 'fulfilled');
    t.is(ok.length, 1);
    const codes = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as ApiError).code);
    t.deepEqual([...new Set(codes)], ['TOKEN_USED']);
    const devices = await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/devices');
    t.is(devices.items.length, 1);
  });
});

test('ok/300 parallel enrollments with distinct tokens get 300 distinct blocks', async (t) => {
  await withBroker(async (b) => {
    const tokens = await mint(b, { count: 300 });
    const grants = await Promise.all(tokens.map((token) => enroll(b, token, generateKeyPair())));
    const starts = new Set(grants.map((g) => g.ports.first));
    t.is(starts.size, 300);
    const sorted = grants.map((g) => g.ports).sort((x, y) => x.first - y.first);
    for (let i = 1; i < sorted.length; i++) t.true(sorted[i]!.first > sorted[i - 1]!.last, 'blocks overlap');
    t.is(new Set(grants.map((g) => g.serial)).size, 300);
    // 300 sockets at once from one address: above the default api.maxConnectionsPerSource (100).
  }, { config: { api: { maxConnectionsPerSource: 400 } } });
});

test('fail/a full pool is PORT_POOL_EXHAUSTED and consumes no token', async (t) => {
  await withBroker(
    async (b) => {
      const tokens = await mint(b, { count: 3 });
      await enroll(b, tokens[0]!, generateKeyPair());
      await enroll(b, tokens[1]!, generateKeyPair());
      t.is(await refusal(t, enroll(b, tokens[2]!, generateKeyPair())), 'PORT_POOL_EXHAUSTED');
      const list = await b.call<{ items: Array<{ status: string }> }>(b.admin, 'GET', '/v1/tokens?status=active');
      t.is(list.items.length, 1);
    },
    { config: { ports: { first: 30000, last: 30003, perDevice: 2 } } },
  );
});
