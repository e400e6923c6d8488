/**
 * The API-key front door (admitApiKey), against a real store: the actor a
 * good key acts as, and the audit row of a refusal at each door (the koa
 * API, the proxy's bearer keys, the proxy's login form), as they were
 * stored before the doors shared it.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { admitApiKey, apiKeyStatus, createApiKey, revokeApiKey, type ApiKeyDoor } from '../../../broker/core/api-keys.js';
import { BrokerError, isBrokerError } from '../../../broker/core/errors.js';
import { openStore } from '../../../broker/store/index.js';
import type { AuditEvent, Store } from '../../../broker/store/types.js';
import type { ApiKeyStatus } from '../../../api/index.js';

const now = new Date('2026-01-01T00:00:00Z');

async function withStore(fn: (deps: { store: Store; clock: () => Date }, key: { id: string; key: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-keys-'));
  const store = await openStore({ filename: join(dir, 'broker.sqlite') });
  try {
    const key = await createApiKey(store, { role: 'operator', name: 'alice' }, { id: 'system', remoteAddr: null }, now);
    await fn({ store, clock: () => now }, key);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function refusals(store: Store): Promise<Array<Omit<AuditEvent, 'id' | 'at'>>> {
  const items = (await store.listAudit({})).items.filter((e) => e.outcome !== 'ok');
  return items.map(({ actor, action, target, remoteAddr, outcome, details }) => ({ actor, action, target, remoteAddr, outcome, details }));
}

test('ok/a good key: its actor, from the door\'s address; nothing refused', (t) =>
  withStore(async (deps, key) => {
    const { record, actor } = await admitApiKey(deps, key.key, { action: 'auth.failure', target: '/v1/devices', remoteAddr: '198.51.100.7' });
    t.is(record.id, key.id);
    t.deepEqual(actor, { id: `apikey:${key.id}`, role: 'operator', name: 'alice', remoteAddr: '198.51.100.7' });
    t.deepEqual(await refusals(deps.store), []);
  }));

const doors: Array<[string, ApiKeyDoor, Record<string, unknown>]> = [
  ['api', { action: 'auth.failure', target: '/v1/devices', remoteAddr: '198.51.100.7' }, {}],
  ['proxy-bearer', { action: 'auth.failure', target: 'kiosk.fleet.test', remoteAddr: '198.51.100.7', details: { via: 'proxy' } }, { via: 'proxy' }],
  ['proxy-login', { action: 'proxy.login', target: 'kiosk', remoteAddr: null }, {}],
];
const presented: Array<[string, (key: string) => string | undefined]> = [
  ['unknown-key', () => 'ctk_notakey0000000000000000000000000000000000'],
  ['tampered-secret', (key) => `${key.slice(0, -4)}AAAA`],
  ['no-key', () => undefined],
];
for (const [doorName, door, details] of doors) {
  for (const [keyName, present] of presented) {
    test(`fail/${doorName}/${keyName}: UNAUTHENTICATED, audited anonymous at the door`, (t) =>
      withStore(async (deps, key) => {
        const err = await t.throwsAsync(admitApiKey(deps, present(key.key), door));
        t.true(isBrokerError(err, 'UNAUTHENTICATED'));
        t.deepEqual(await refusals(deps.store), [{ actor: 'anonymous', action: door.action, target: door.target, remoteAddr: door.remoteAddr, outcome: 'UNAUTHENTICATED', details }]);
      }));
  }
}

test('fail/a revoked key: API_KEY_REVOKED, audited so; with a wrong secret it is as good as unknown (no oracle)', (t) =>
  withStore(async (deps, key) => {
    await deps.store.revokeApiKey(key.id, now);
    const err = await t.throwsAsync(admitApiKey(deps, key.key, doors[0]![1]));
    t.true(isBrokerError(err, 'API_KEY_REVOKED'));
    const wrong = await t.throwsAsync(admitApiKey(deps, `${key.key.slice(0, -4)}AAAA`, doors[0]![1]));
    t.true(isBrokerError(wrong, 'UNAUTHENTICATED'));
    t.deepEqual((await refusals(deps.store)).map((e) => e.outcome), ['API_KEY_REVOKED', 'UNAUTHENTICATED']);
  }));

test('fail/an expired key: API_KEY_EXPIRED from its expiresAt on; active before', (t) =>
  withStore(async (deps) => {
    const key = await createApiKey(deps.store, { role: 'proxy', name: 'kiosk-viewer', expiresAt: new Date(now.getTime() + 60_000) }, { id: 'system', remoteAddr: null }, now);
    t.is(key.expiresAt, '2026-01-01T00:01:00.000Z');
    t.is((await admitApiKey(deps, key.key, doors[0]![1])).actor.role, 'proxy');
    const later = { store: deps.store, clock: () => new Date(now.getTime() + 60_000) };
    t.true(isBrokerError(await t.throwsAsync(admitApiKey(later, key.key, doors[0]![1])), 'API_KEY_EXPIRED'));
  }));

test('apiKeyStatus: revoked > expired > active', (t) => {
  const base = { id: 'key_x', name: 'n', role: 'admin' as const, keyHash: 'h', createdAt: now, createdBy: 's', lastUsedAt: null };
  const past = new Date(now.getTime() - 1);
  const cases: Array<[string, Date | null, Date | null, ApiKeyStatus]> = [
    ['ok/never-expires', null, null, 'active'],
    ['ok/expires-later', null, new Date(now.getTime() + 1), 'active'],
    ['fail/expires-now', null, now, 'expired'],
    ['fail/expired', null, past, 'expired'],
    ['fail/revoked', past, null, 'revoked'],
    ['fail/revoked-and-expired', past, past, 'revoked'],
  ];
  for (const [name, revokedAt, expiresAt, want] of cases) t.is(apiKeyStatus({ ...base, revokedAt, expiresAt }, now), want, name);
});

test('fail/create: an expiry not in the future is BAD_REQUEST and stores nothing', (t) =>
  withStore(async (deps) => {
    const err = await t.throwsAsync(createApiKey(deps.store, { role: 'operator', name: 'late', expiresAt: now }, { id: 'system', remoteAddr: null }, now));
    t.true(isBrokerError(err, 'BAD_REQUEST'));
    t.is((await deps.store.listApiKeys()).length, 1);
  }));

test('fail/revoke: an unknown id is NOT_FOUND and audits nothing', (t) =>
  withStore(async (deps) => {
    const err = await t.throwsAsync(revokeApiKey(deps, 'key_aaaaaaaaaaaaaaaa', {}, { id: 'system', remoteAddr: null }));
    t.true(isBrokerError(err, 'NOT_FOUND'));
    t.deepEqual((await deps.store.listAudit({ action: 'apikey.revoke' })).items, []);
  }));

test('fail/RATE_LIMITED from the check (the proxy\'s limiter) is rethrown, not audited: no key was checked', (t) =>
  withStore(async (deps, key) => {
    const limited = new BrokerError('RATE_LIMITED', 'wait');
    const err = await t.throwsAsync(admitApiKey(deps, key.key, doors[1]![1], () => Promise.reject(limited)));
    t.is(err, limited);
    t.deepEqual(await refusals(deps.store), []);
  }));
