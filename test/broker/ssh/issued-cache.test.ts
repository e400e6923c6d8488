/**
 * broker/ssh/issued-cache.ts: logins fall back on a record the store gave
 * at a recent login only when the store is unavailable, and never for a
 * serial or device seen revoked, a stale record, or while catching up.
 */
import test from 'ava';
import { BrokerError } from '../../../broker/core/errors.js';
import { IssuedCache } from '../../../broker/ssh/issued-cache.js';
import type { IssuedCertificate } from '../../../broker/ssh/issued.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const record = (deviceId: string, over: Partial<IssuedCertificate['certificate']> = {}, status = 'active'): IssuedCertificate => ({
  certificate: {
    kind: 'device', deviceId, keyFingerprint: 'SHA256:k', keyId: `device:${deviceId}`, principal: 'ports-20000-20001',
    validAfter: new Date(T0), validBefore: new Date(T0 + 3_600_000), revokedAt: null, ...over,
  },
  device: { id: deviceId, status, portFirst: 20000, portLast: 20001 },
});

function harness(o: { ttlMs?: number; maxEntries?: number } = {}) {
  let now = T0;
  const revoked = new Set<string>();
  const records = new Map<bigint, IssuedCertificate | null>();
  let failure: Error | null = null;
  const cache = new IssuedCache({
    ttlMs: o.ttlMs ?? 60_000, maxEntries: o.maxEntries ?? 10, clock: () => new Date(now),
    seenRevoked: ({ deviceId }) => deviceId !== null && revoked.has(deviceId),
  });
  const lookup = cache.wrap(async (serial) => {
    if (failure) throw failure;
    return records.get(serial) ?? null;
  });
  return {
    cache, lookup, records, revoked,
    advance: (ms: number) => void (now += ms),
    storeDown: (err: Error | null = new BrokerError('STORE_UNAVAILABLE', 'down')) => void (failure = err),
  };
}

const unavailable = { instanceOf: BrokerError, message: 'down' };

test('ok/the store answers: its answer, and a good record is remembered for when it is unavailable', async (t) => {
  const h = harness();
  h.records.set(1n, record('dev_a'));
  t.deepEqual(await h.lookup(1n), record('dev_a'));
  h.storeDown();
  t.deepEqual(await h.lookup(1n), record('dev_a'));
  t.is(h.cache.stats().answered, 1);
});

test('fail/a serial never verified here, or not vouched for, is refused while the store is unavailable', async (t) => {
  const h = harness();
  h.records.set(2n, record('dev_b', { revokedAt: new Date(T0) }));
  h.records.set(3n, record('dev_c', {}, 'revoked'));
  await h.lookup(2n);
  await h.lookup(3n);
  await h.lookup(4n);
  h.storeDown();
  for (const serial of [2n, 3n, 4n, 5n]) await t.throwsAsync(h.lookup(serial), unavailable);
});

test('fail/another store error (busy, internal) is never answered from the cache', async (t) => {
  const h = harness();
  h.records.set(1n, record('dev_a'));
  await h.lookup(1n);
  h.storeDown(new BrokerError('STORE_BUSY', 'busy'));
  await t.throwsAsync(h.lookup(1n), { message: 'busy' });
});

test('fail/a device seen revoked (an event, or the revocation list) is never answered from the cache', async (t) => {
  const h = harness();
  h.records.set(1n, record('dev_a'));
  h.records.set(2n, record('dev_b'));
  await h.lookup(1n);
  await h.lookup(2n);
  h.cache.forgetDevice('dev_a');
  h.revoked.add('dev_b');
  h.storeDown();
  await t.throwsAsync(h.lookup(1n), unavailable);
  await t.throwsAsync(h.lookup(2n), unavailable);
});

test('fail/a lookup under way while the device was revoked remembers nothing', async (t) => {
  const h = harness();
  h.records.set(1n, record('dev_a'));
  const pending = h.lookup(1n);
  h.cache.forgetDevice('dev_a');
  await pending;
  h.storeDown();
  await t.throwsAsync(h.lookup(1n), unavailable);
});

test('fail/rotated-away serials, a record past its TTL or its certificate\'s expiry, and a suspended cache', async (t) => {
  const h = harness({ ttlMs: 60_000 });
  for (const s of [1n, 2n, 3n]) h.records.set(s, record(`dev_${s}`));
  h.records.set(4n, record('dev_4', { validBefore: new Date(T0 + 30_000) }));
  for (const s of [1n, 2n, 3n, 4n]) await h.lookup(s);
  h.cache.forgetSerials([1n]);
  h.storeDown();
  await t.throwsAsync(h.lookup(1n), unavailable);
  t.truthy(await h.lookup(2n));
  h.cache.suspend();
  await t.throwsAsync(h.lookup(2n), unavailable, 'not while catching up');
  h.cache.trust();
  t.truthy(await h.lookup(2n));
  h.advance(30_000);
  await t.throwsAsync(h.lookup(4n), unavailable, 'the certificate expired');
  h.advance(30_001);
  await t.throwsAsync(h.lookup(3n), unavailable, 'verified too long ago');
});

test('ok/bounded: the least recently verified records go first', async (t) => {
  const h = harness({ maxEntries: 3 });
  for (const s of [1n, 2n, 3n, 4n]) {
    h.records.set(s, record(`dev_${s}`));
    await h.lookup(s);
  }
  t.is(h.cache.stats().entries, 3);
  h.storeDown();
  await t.throwsAsync(h.lookup(1n), unavailable);
  t.truthy(await h.lookup(4n));
});
