/**
 * Renewal nonces and audit events (broker/store/audit.ts); the second test
 * also covers device presence and API keys, in one store.
 */
import { T0, at, device, withStore, test } from './fixtures.js';

test('ok/nonce replay detected; pruned after expiry', async (t) => {
  await withStore(async (store) => {
    t.true(await store.insertNonce('n-1', 'dev_a', at(5 * 60_000)));
    t.false(await store.insertNonce('n-1', 'dev_a', at(5 * 60_000)));
    t.false(await store.insertNonce('n-1', 'dev_b', at(10 * 60_000)));
    t.is(await store.pruneNonces(at(60_000)), 0);
    t.is(await store.pruneNonces(at(5 * 60_000)), 1);
    t.true(await store.insertNonce('n-1', 'dev_a', at(10 * 60_000)));
  });
});

test('ok/presence, api keys, audit', async (t) => {
  await withStore(async (store) => {
    const d = device();
    await store.insertDevice(d);
    await store.setDeviceOnline(d.id, { online: true, since: T0, remoteAddr: '198.51.100.7', lastSeen: T0 });
    const live = await store.findDevice(d.id);
    t.deepEqual([live?.online, live?.connectedSince, live?.remoteAddr], [true, T0, '198.51.100.7']);
    t.deepEqual(await store.countDevicesByStatus(), { active: 1, revoked: 0, online: 1 });

    await store.insertApiKey({ id: 'ak_1', name: 'ops', role: 'operator', keyHash: 'h', createdAt: T0, createdBy: 'system' });
    await store.touchApiKey('ak_1', at(1000));
    await store.touchApiKey('ak_1', at(2000)); // within a minute: not written
    t.deepEqual((await store.findApiKey('ak_1'))?.lastUsedAt, at(1000));
    t.true(await store.revokeApiKey('ak_1', at(3000)));
    t.false(await store.revokeApiKey('ak_1', at(4000)));
    t.deepEqual((await store.listApiKeys()).map((k) => [k.id, k.revokedAt]), [['ak_1', at(3000)]]);

    for (let i = 0; i < 5; i++) {
      await store.appendAudit({
        at: at(i), actor: i % 2 ? 'apikey:ak_1' : 'system', action: i < 4 ? 'token.mint' : 'auth.failure',
        target: null, remoteAddr: null, outcome: i < 4 ? 'ok' : 'UNAUTHENTICATED', details: { i },
      });
    }
    const page1 = await store.listAudit({ action: 'token.mint', limit: 2 });
    const page2 = await store.listAudit({ action: 'token.mint', limit: 2, cursor: page1.nextCursor });
    t.deepEqual([...page1.items, ...page2.items].map((e) => e.details.i), [0, 1, 2, 3]);
    t.is(page2.nextCursor, null);
    t.deepEqual((await store.listAudit({ actor: 'apikey:ak_1', since: at(2) })).items.map((e) => e.details.i), [3]);
    t.deepEqual((await store.listAudit({ action: 'auth.failure' })).items.map((e) => e.outcome), ['UNAUTHENTICATED']);
  });
});

test('ok/audit retention deletes old refusals and failures only; countAudit counts every row', async (t) => {
  await withStore(async (store) => {
    const row = (ms: number, outcome: string, action = 'device.enroll') =>
      store.appendAudit({ at: at(ms), actor: 'anonymous', action, target: null, remoteAddr: '192.0.2.1', outcome: outcome as 'ok', details: {} });
    for (const outcome of ['ok', 'allowed', 'closed', 'TOKEN_UNKNOWN', 'refused', 'UNAUTHENTICATED']) await row(0, outcome);
    await row(600_000, 'TOKEN_UNKNOWN');
    t.is(await store.countAudit(), 7);
    t.is(await store.pruneAuditFailures(at(300_000)), 3, 'the three old failures');
    const left = (await store.listAudit({})).items.map((e) => `${e.outcome}@${e.at.getTime() - T0.getTime()}`);
    t.deepEqual(left, ['ok@0', 'allowed@0', 'closed@0', 'TOKEN_UNKNOWN@600000']);
    t.is(await store.countAudit(), 4);
  });
});
