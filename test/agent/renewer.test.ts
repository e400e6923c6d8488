/** agent/renewer.ts: when to renew (about two thirds of the life, the broker's hint, jitter, bounds). */
import test from 'ava';
import { RENEW_JITTER_FRACTION, renewalDueAt } from '../../agent/renewer.js';

const HOUR = 3600_000;
const v = { validAfter: 0, validBefore: HOUR };

const cases: Array<[string, number | undefined, number, number]> = [
  ['ok/no hint: two thirds of the life', undefined, 0, (2 / 3) * HOUR],
  ['ok/the broker hint is used', 0.5 * HOUR, 0, 0.5 * HOUR],
  ['ok/a hint before validAfter is ignored', -5, 0, (2 / 3) * HOUR],
  ['ok/a hint after expiry is ignored', 2 * HOUR, 0, (2 / 3) * HOUR],
  ['ok/a NaN hint is ignored', Number.NaN, 0, (2 / 3) * HOUR],
  ['ok/jitter adds up to 5% of the life', undefined, 0.999_999, (2 / 3) * HOUR + RENEW_JITTER_FRACTION * HOUR],
  ['ok/jitter never pushes past 90% of the life', 0.88 * HOUR, 0.999_999, 0.9 * HOUR],
  ['ok/a late hint is kept as is, without jitter beyond it', 0.95 * HOUR, 0.999_999, 0.95 * HOUR],
];

for (const [name, hint, random, expected] of cases) {
  test(name, (t) => {
    t.is(renewalDueAt(v, hint, () => random), Math.round(expected));
  });
}

test('ok/a fleet enrolled at the same instant does not renew at the same instant', (t) => {
  const times = new Set(Array.from({ length: 100 }, () => renewalDueAt(v, undefined, Math.random)));
  t.true(times.size > 90);
  for (const at of times) t.true(at >= (2 / 3) * HOUR && at <= (2 / 3 + RENEW_JITTER_FRACTION) * HOUR);
});
