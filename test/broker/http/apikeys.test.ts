/**
 * API keys over the HTTP API, against a real broker: revocation (the next
 * request fails, every revocation audited without the secret, the last
 * admin key kept unless forced), expiry (API_KEY_EXPIRED, shown in the
 * list), the proxy-only role (refused on every API route with
 * API_KEY_PROXY_ONLY), and bad input (a code, nothing changed).
 */
import test from 'ava';
import { ApiError, type ApiClientOptions, type AuditEventView, type CreateApiKeyResponse, type ListApiKeysResponse, type ListAuditResponse, type RevokeApiKeyResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { snapshotState } from '../../../testkit/db-snapshot.js';

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'NONE';
  } catch (err) {
    if (err instanceof ApiError) return `${err.status} ${err.code}`;
    throw err;
  }
}

async function newKey(b: TestBroker, role: string, extra: Record<string, unknown> = {}): Promise<CreateApiKeyResponse & { client: ApiClientOptions }> {
  const created = await b.call<CreateApiKeyResponse>(b.admin, 'POST', '/v1/apikeys', { role, name: `k-${role}`, ...extra });
  return { ...created, client: { ...b.anonymous, apiKey: created.key } };
}

/** The id part of a `ctk_<id>.<secret>` key. */
function idOf(key: string): string {
  return key.split('.')[0]!.slice('ctk_'.length);
}

async function auditOf(b: TestBroker, action: string): Promise<AuditEventView[]> {
  return (await b.call<ListAuditResponse>(b.admin, 'GET', `/v1/audit?action=${action}`)).items;
}

test('ok/revoke: the key fails on its next request (API_KEY_REVOKED), is listed revoked, and the revocation is audited without the secret', (t) =>
  withBroker(async (b) => {
    const ops = await newKey(b, 'operator');
    t.is(await code(b.call(ops.client, 'GET', '/v1/devices')), 'NONE');
    const res = await b.call<RevokeApiKeyResponse>(b.admin, 'POST', `/v1/apikeys/${ops.id}/revoke`, {});
    t.false(res.alreadyRevoked);
    t.is(res.key.id, ops.id);
    t.is(res.key.status, 'revoked');
    t.truthy(res.key.revokedAt);
    t.is(await code(b.call(ops.client, 'GET', '/v1/devices')), '401 API_KEY_REVOKED');

    const again = await b.call<RevokeApiKeyResponse>(b.admin, 'POST', `/v1/apikeys/${ops.id}/revoke`, {});
    t.true(again.alreadyRevoked);
    t.is(again.key.revokedAt, res.key.revokedAt, 'a second revocation changes nothing');

    const listed = (await b.call<ListApiKeysResponse>(b.admin, 'GET', '/v1/apikeys')).items.find((k) => k.id === ops.id)!;
    t.is(listed.status, 'revoked');
    const audit = await auditOf(b, 'apikey.revoke');
    t.deepEqual(audit.map((e) => [e.actor, e.target, e.outcome, e.details]), [
      [`apikey:${idOf(b.init.adminKey)}`, ops.id, 'ok', { name: 'k-operator', role: 'operator', alreadyRevoked: false }],
      [`apikey:${idOf(b.init.adminKey)}`, ops.id, 'ok', { name: 'k-operator', role: 'operator', alreadyRevoked: true }],
    ]);
    const refused = (await auditOf(b, 'auth.failure')).at(-1)!;
    t.is(refused.outcome, 'API_KEY_REVOKED');
    const secret = ops.key.split('.')[1]!;
    t.false(JSON.stringify(await b.call(b.admin, 'GET', '/v1/audit?limit=1000')).includes(secret), 'the secret is in no audit row');
    t.false(b.logs.join('').includes(secret), 'the secret is in no log line');
  }));

test('fail/last-admin: the last active admin key is kept unless forced; then the API has no admin', (t) =>
  withBroker(async (b) => {
    const adminId = idOf(b.init.adminKey);
    const before = await snapshotState(dataPaths(b.dir).database);
    t.is(await code(b.call(b.admin, 'POST', `/v1/apikeys/${adminId}/revoke`, {})), '409 LAST_ADMIN_KEY');
    t.deepEqual(await snapshotState(dataPaths(b.dir).database), before);

    // An expired admin key is no admin: it does not count as another.
    const expiring = await newKey(b, 'admin', { expiresAt: new Date(b.clock.now().getTime() + 60_000).toISOString() });
    b.clock.advance(61_000);
    t.is(await code(b.call(expiring.client, 'GET', '/v1/apikeys')), '401 API_KEY_EXPIRED');
    t.is(await code(b.call(b.admin, 'POST', `/v1/apikeys/${adminId}/revoke`, {})), '409 LAST_ADMIN_KEY');

    // With a second active admin, either may go; the last one only with force.
    const second = await newKey(b, 'admin');
    t.is(await code(b.call(b.admin, 'POST', `/v1/apikeys/${adminId}/revoke`, {})), 'NONE');
    t.is(await code(b.call(b.admin, 'GET', '/v1/apikeys')), '401 API_KEY_REVOKED', 'an admin key revoking itself');
    t.is(await code(b.call(second.client, 'POST', `/v1/apikeys/${second.id}/revoke`, {})), '409 LAST_ADMIN_KEY');
    const forced = await b.call<RevokeApiKeyResponse>(second.client, 'POST', `/v1/apikeys/${second.id}/revoke`, { force: true });
    t.is(forced.key.status, 'revoked');
    t.is(await code(b.call(second.client, 'GET', '/v1/apikeys')), '401 API_KEY_REVOKED');
    const revocations = (await b.broker.store.listAudit({ action: 'apikey.revoke' })).items;
    t.deepEqual(revocations.at(-1)!.details, { name: 'k-admin', role: 'admin', alreadyRevoked: false, force: true });
  }));

test('ok/expiry: a key with expiresAt works until then, is listed with it, then fails API_KEY_EXPIRED; old-style keys never expire', (t) =>
  withBroker(async (b) => {
    const expiresAt = new Date(b.clock.now().getTime() + 3600_000).toISOString();
    const ops = await newKey(b, 'operator', { expiresAt });
    t.is(ops.expiresAt, expiresAt);
    t.is(await code(b.call(ops.client, 'GET', '/v1/devices')), 'NONE');
    b.clock.advance(3600_000 + 1000);
    t.is(await code(b.call(ops.client, 'GET', '/v1/devices')), '401 API_KEY_EXPIRED');
    const items = (await b.call<ListApiKeysResponse>(b.admin, 'GET', '/v1/apikeys')).items;
    t.deepEqual(items.map((k) => [k.name, k.status, k.expiresAt]), [['initial-admin', 'active', null], ['k-operator', 'expired', expiresAt]]);
  }));

const API_ROUTES: Array<[string, string, unknown?]> = [
  ['POST', '/v1/tokens', { count: 1 }], ['GET', '/v1/tokens'], ['POST', '/v1/tokens/revoke', { batch: 'x' }],
  ['GET', '/v1/devices'], ['GET', '/v1/devices/kiosk-1'], ['POST', '/v1/devices/kiosk-1/revoke', {}],
  ['POST', '/v1/devices/kiosk-1/operator-certificate', { publicKey: formatPublicKey(generateKeyPair().publicKey) }],
  ['GET', '/v1/audit'], ['POST', '/v1/apikeys', { role: 'admin', name: 'escalate' }], ['GET', '/v1/apikeys'], ['POST', '/v1/apikeys/key_aaaaaaaaaaaaaaaa/revoke', {}],
];

test('fail/proxy-role: every API route refuses a proxy key with 403 API_KEY_PROXY_ONLY and changes nothing', (t) =>
  withBroker(async (b) => {
    const proxy = await newKey(b, 'proxy');
    const before = await snapshotState(dataPaths(b.dir).database);
    for (const [method, path, body] of API_ROUTES) {
      t.is(await code(b.call(proxy.client, method, path, body)), '403 API_KEY_PROXY_ONLY', `${method} ${path}`);
    }
    const admin = idOf(b.init.adminKey);
    t.is(await code(b.call(proxy.client, 'POST', `/v1/apikeys/${admin}/revoke`, { force: true })), '403 API_KEY_PROXY_ONLY');
    t.deepEqual(await snapshotState(dataPaths(b.dir).database), before);
  }));

test('fail/bad input: revoking and creating keys with bad bodies get codes and change nothing', (t) =>
  withBroker(async (b) => {
    const ops = await newKey(b, 'operator');
    const before = await snapshotState(dataPaths(b.dir).database);
    const cases: Array<[ApiClientOptions, string, string, unknown, string]> = [
      [b.admin, 'POST', '/v1/apikeys/key_aaaaaaaaaaaaaaaa/revoke', {}, '404 NOT_FOUND'],
      [b.admin, 'POST', '/v1/apikeys/..%2F..%2Fetc/revoke', {}, '404 NOT_FOUND'],
      [b.admin, 'POST', `/v1/apikeys/${ops.id}/revoke`, { force: 'yes' }, '400 BAD_REQUEST'],
      [b.admin, 'POST', `/v1/apikeys/${ops.id}/revoke`, { reason: 'x' }, '400 BAD_REQUEST'],
      [ops.client, 'POST', `/v1/apikeys/${ops.id}/revoke`, {}, '403 FORBIDDEN'],
      [b.anonymous, 'POST', `/v1/apikeys/${ops.id}/revoke`, {}, '401 UNAUTHENTICATED'],
      [b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'x', expiresAt: '2020-01-01T00:00:00Z' }, '400 BAD_REQUEST'],
      [b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'x', expiresAt: 'tomorrow' }, '400 BAD_REQUEST'],
      [b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'x', expiresAt: 1893456000 }, '400 BAD_REQUEST'],
      [b.admin, 'POST', '/v1/apikeys', { role: 'root', name: 'x' }, '400 BAD_REQUEST'],
    ];
    for (const [client, method, path, body, want] of cases) t.is(await code(b.call(client, method, path, body)), want, `${method} ${path} ${JSON.stringify(body)}`);
    t.deepEqual(await snapshotState(dataPaths(b.dir).database), before);
    t.is(await code(b.call(ops.client, 'GET', '/v1/devices')), 'NONE', 'the key is still good');
  }));
