import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ephemeralOverlapWarning, parseEphemeralRange, readEphemeralRange } from '../../../broker/compose/ephemeral-ports.js';

test('parses the kernel range; anything else is not a range', (t) => {
  t.deepEqual(parseEphemeralRange('32768\t60999\n'), { first: 32768, last: 60999 });
  t.deepEqual(parseEphemeralRange('1024 65535'), { first: 1024, last: 65535 });
  for (const bad of ['', '32768', '60999 32768', '0 100', '1 70000', 'a b']) t.is(parseEphemeralRange(bad), null, bad);
});

test('reads the file, or null when there is none', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-eph-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'range'), '40000\t50000\n');
  t.deepEqual(readEphemeralRange(join(dir, 'range')), { first: 40000, last: 50000 });
  t.is(readEphemeralRange(join(dir, 'missing')), null);
});

test('warns only when the pool overlaps, naming the overlap', (t) => {
  const eph = { first: 32768, last: 60999 };
  t.is(ephemeralOverlapWarning({ first: 20000, last: 29999 }, eph), null);
  t.is(ephemeralOverlapWarning({ first: 61000, last: 62000 }, eph), null);
  t.is(ephemeralOverlapWarning({ first: 30000, last: 40000 }, null), null, 'unknown range: nothing to say');
  const w = ephemeralOverlapWarning({ first: 30000, last: 40000 }, eph);
  t.regex(w!, /pool 30000-40000 overlaps the kernel's ephemeral ports 32768-60999 \(32768-40000\)/);
  t.regex(w!, /below 32768/);
});
