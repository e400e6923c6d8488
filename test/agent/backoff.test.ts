/** agent/backoff.ts: exponential growth, full jitter, cap, floor; pure. */
import test from 'ava';
import { delayBound, nextDelay, type BackoffOptions } from '../../agent/backoff.js';

const opts: BackoffOptions = { baseMs: 1000, capMs: 60_000 };

test('ok/the upper bound doubles per attempt up to the cap', (t) => {
  const bounds = [0, 1, 2, 3, 4, 5, 6, 7, 20].map((a) => delayBound(a, opts));
  t.deepEqual(bounds, [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
});

test('ok/full jitter: random 0 gives the floor, random near 1 the bound, 0.5 half of it', (t) => {
  t.is(nextDelay(3, opts, () => 0), 0);
  t.is(nextDelay(3, { ...opts, minMs: 100 }, () => 0), 100);
  t.is(nextDelay(3, opts, () => 0.5), 4000);
  t.is(nextDelay(3, opts, () => 0.999999), 8000);
  t.is(nextDelay(3, { ...opts, minMs: 100 }, () => 0.5), 100 + Math.round(0.5 * (8000 - 100)));
});

test('ok/every delay lies within [min, bound] for many random draws', (t) => {
  let seed = 42;
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const o = { ...opts, minMs: 50 };
  for (let attempt = 0; attempt < 30; attempt++) {
    for (let i = 0; i < 200; i++) {
      const d = nextDelay(attempt, o, random);
      t.true(d >= 50 && d <= delayBound(attempt, o), `attempt ${attempt}: ${d}`);
    }
  }
});

test('ok/jitter spreads a fleet: 1000 devices at attempt 2 do not land in one bucket', (t) => {
  const delays = Array.from({ length: 1000 }, () => nextDelay(2, opts, Math.random));
  const buckets = new Array(10).fill(0) as number[];
  for (const d of delays) buckets[Math.min(9, Math.floor(d / 400))]! += 1;
  // Uniform over [0, 4000): about 100 per 400 ms bucket; none holds a third of the fleet.
  t.true(Math.max(...buckets) < 333, buckets.join(','));
  // Without jitter (random always 1) they all land on the same instant.
  t.is(new Set(Array.from({ length: 1000 }, () => nextDelay(2, opts, () => 1))).size, 1);
});

test('ok/huge attempts, factor and odd inputs stay finite and capped', (t) => {
  t.is(nextDelay(10_000, opts, () => 1), 60_000);
  t.is(nextDelay(Number.POSITIVE_INFINITY, opts, () => 1), 1000, 'a non-finite attempt counts as attempt 0');
  t.is(nextDelay(-5, opts, () => 1), 1000);
  t.is(nextDelay(2, { ...opts, factor: 3 }, () => 1), 9000);
  t.is(nextDelay(2, opts, () => 7), 4000, 'random() is clamped to [0, 1]');
  t.is(nextDelay(2, opts, () => -1), 0);
  t.is(nextDelay(0, { baseMs: 1000, capMs: 10, minMs: 500 }, () => 1), 500, 'the floor wins over a smaller cap');
});
