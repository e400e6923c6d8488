import test from 'ava';
import { ConnectionRateLimiter, PerSourceCap, rateLimitKey, shouldDropEarly } from '../../../broker/core/rate-limit.js';

function limiter(ratePerSecond: number, burst: number, maxSources?: number) {
  let now = 0;
  const l = new ConnectionRateLimiter({ ratePerSecond, burst, maxSources }, () => now);
  return { l, advance: (ms: number) => (now += ms) };
}

const allowed = (l: ConnectionRateLimiter, addr: string, n: number): number => {
  let ok = 0;
  for (let i = 0; i < n; i++) if (l.take(addr).allowed) ok++;
  return ok;
};

test('a burst is admitted at once, then the sustained rate', (t) => {
  const { l, advance } = limiter(10, 100);
  t.is(allowed(l, '192.0.2.1', 150), 100);
  advance(1000);
  t.is(allowed(l, '192.0.2.1', 50), 10);
  advance(60_000);
  t.is(allowed(l, '192.0.2.1', 150), 100, 'refills to the burst, never beyond');
});

test('sources are independent', (t) => {
  const { l } = limiter(1, 2);
  t.is(allowed(l, '192.0.2.1', 5), 2);
  t.is(allowed(l, '192.0.2.2', 5), 2);
});

test('firstRefusal marks only the first refusal of a run', (t) => {
  const { l, advance } = limiter(1, 1);
  t.true(l.take('192.0.2.1').allowed);
  t.deepEqual(l.take('192.0.2.1'), { allowed: false, firstRefusal: true });
  t.deepEqual(l.take('192.0.2.1'), { allowed: false, firstRefusal: false });
  advance(1000);
  t.true(l.take('192.0.2.1').allowed);
  t.deepEqual(l.take('192.0.2.1'), { allowed: false, firstRefusal: true });
});

const keyCases: [addr: string, key: string][] = [
  ['192.0.2.1', '192.0.2.1'],
  ['::ffff:192.0.2.1', '192.0.2.1'],
  ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
  ['2001:db8:1:2::7', '2001:db8:1:2::/64'],
  ['2001:0db8:0001:0002:ffff::1', '2001:db8:1:2::/64'],
  ['2001:db8::1', '2001:db8:0:0::/64'],
  ['fe80::1%eth0', 'fe80:0:0:0::/64'],
  ['::1', '0:0:0:0::/64'],
];

for (const [addr, key] of keyCases) {
  test(`rateLimitKey ${addr}`, (t) => {
    t.is(rateLimitKey(addr), key);
  });
}

test('one IPv6 /64 shares a bucket', (t) => {
  const { l } = limiter(1, 3);
  t.is(allowed(l, '2001:db8:1:2::1', 1) + allowed(l, '2001:db8:1:2::2', 1) + allowed(l, '2001:db8:1:2:ffff::3', 5), 3);
  t.is(allowed(l, '2001:db8:1:3::1', 1), 1, 'the next /64 has its own');
});

test('the number of tracked sources stays bounded', (t) => {
  const { l, advance } = limiter(10, 5, 100);
  for (let i = 0; i < 1000; i++) l.take(`10.0.${i >> 8}.${i & 255}`);
  t.true(l.trackedSources <= 100);
  advance(10_000); // every bucket refilled: pruned on the next insertion
  for (let i = 0; i < 10; i++) l.take(`10.1.0.${i}`);
  t.true(l.trackedSources <= 11 + 1);
});

test('a refused source is not forgotten by pruning while it is still empty', (t) => {
  const { l } = limiter(0.001, 1, 10);
  t.true(l.take('192.0.2.1').allowed);
  t.false(l.take('192.0.2.1').allowed);
  for (let i = 0; i < 5; i++) l.take(`10.0.0.${i}`); // below the bound: no eviction
  t.false(l.take('192.0.2.1').allowed);
});

test('retryAfterSeconds: 0 while a token is left, then the wait for the next one; it takes nothing', (t) => {
  let now = 0;
  const limiter = new ConnectionRateLimiter({ ratePerSecond: 0.1, burst: 2 }, () => now);
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 0, 'an unknown source');
  limiter.take('192.0.2.9');
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 0);
  limiter.take('192.0.2.9');
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 10);
  now = 4_000;
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 6);
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 6, 'asking twice takes nothing');
  now = 10_000;
  t.is(limiter.retryAfterSeconds('192.0.2.9'), 0);
  t.true(limiter.take('192.0.2.9').allowed);
});

test('early drop: none below start, rate% at start rising linearly, all from full (sshd MaxStartups)', (t) => {
  const policy = { start: 10, rate: 30, full: 110 };
  const drops = (open: number, draw: number): boolean => shouldDropEarly(open, policy, () => draw);
  t.false(drops(9, 0), 'below start: never, whatever the draw');
  t.true(drops(10, 0.299) && !drops(10, 0.3), 'at start: 30%');
  t.true(drops(60, 0.649) && !drops(60, 0.65), 'half way: 65%');
  t.true(drops(109, 0.99) && !drops(109, 0.999), 'just below full: 99.3%');
  t.true(drops(110, 0.9999) && drops(500, 0.9999), 'from full: always');
  let n = 0;
  const cycle = (): number => (n++ % 100) / 100; // every draw once per 100
  let dropped = 0;
  for (let i = 0; i < 1000; i++) if (shouldDropEarly(35, policy, cycle)) dropped++;
  t.is(dropped, 480, 'at a quarter of the way, 47.5% rounds up to 48 draws in 100');
});

test('per-source cap: a source holds at most max; release frees a slot; sources are independent; an IPv6 /64 is one source', (t) => {
  const cap = new PerSourceCap(2);
  t.true(cap.acquire('192.0.2.1').allowed);
  t.true(cap.acquire('192.0.2.1').allowed);
  t.deepEqual(cap.acquire('192.0.2.1'), { allowed: false, firstRefusal: true });
  t.deepEqual(cap.acquire('::ffff:192.0.2.1'), { allowed: false, firstRefusal: false }, 'mapped IPv4 is the same source; one log per run');
  t.true(cap.acquire('192.0.2.2').allowed);
  cap.release('192.0.2.1');
  t.is(cap.holding('192.0.2.1'), 1);
  t.true(cap.acquire('192.0.2.1').allowed);
  t.true(cap.acquire('2001:db8::1').allowed);
  t.true(cap.acquire('2001:db8::ffff').allowed);
  t.false(cap.acquire('2001:db8:0:0:1::1').allowed);
  t.true(cap.acquire('2001:db8:0:1::1').allowed, 'another /64');
  for (const addr of ['192.0.2.1', '192.0.2.1', '192.0.2.2']) cap.release(addr);
  t.is(cap.holding('192.0.2.1'), 0);
  t.is(cap.holding('192.0.2.2'), 0);
});
