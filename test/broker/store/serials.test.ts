/** Serials from reserved blocks (broker/store/serials.ts), alone and through openStore. */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../../broker/store/index.js';
import { SerialReserve, type SerialBlock } from '../../../broker/store/serials.js';

/** A counter advanced by whole blocks, as certs.reserveSerials does. */
function fakeCounter(size: bigint, end = 2n ** 63n - 1n) {
  const state = { value: 0n, reservations: 0 };
  const reserve = async (): Promise<SerialBlock | null> => {
    state.reservations++;
    if (state.value > end - size) return null;
    state.value += size;
    return { first: state.value - size + 1n, last: state.value };
  };
  return { state, reserve };
}

test('ok/serials come from blocks: unique, increasing, one reservation per block', async (t) => {
  const counter = fakeCounter(8n);
  const reserve = new SerialReserve(counter.reserve, 8n);
  t.is(reserve.take(), null); // empty: starts a refill
  await reserve.refill();
  const got: bigint[] = [];
  for (let i = 0; i < 40; i++) {
    const s = reserve.take();
    if (s === null) await reserve.refill();
    else got.push(s);
  }
  t.true(got.length >= 30);
  t.true(got.every((s, i) => s > 0n && (i === 0 || s > got[i - 1]!)), got.join(','));
  // refilled at half a block, so never more than one block skipped per refill
  t.true(counter.state.reservations <= Math.ceil(40 / 4) + 2);
});

test('ok/a block reserved while the counter moved on past it is trimmed: serials keep growing', async (t) => {
  let release!: (b: SerialBlock) => void;
  const reserve = new SerialReserve(() => new Promise<SerialBlock>((r) => (release = r)), 10n);
  t.is(reserve.take(), null);
  // meanwhile a transaction advanced the counter itself, to 15
  reserve.handedOut(15n);
  release({ first: 11n, last: 20n });
  await reserve.refill();
  t.is(reserve.take(), 16n);
  t.is(reserve.take(), 17n);
});

test('ok/a failed reservation is retried; take() meanwhile says empty', async (t) => {
  let calls = 0;
  const reserve = new SerialReserve(async () => {
    calls++;
    if (calls === 1) throw new Error('disk full');
    return { first: 1n, last: 4n };
  }, 4n);
  t.is(reserve.take(), null);
  await reserve.refill(); // the first attempt failed: nothing installed
  t.is(reserve.take(), null); // and a second attempt started
  await reserve.refill();
  t.is(reserve.take(), 1n);
});

test('store ok/concurrent transactions and lone calls: serials unique, nonzero, increasing in commit order', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-serials-'));
  const store = await openStore({ filename: join(dir, 'certunnel.db') });
  try {
    const T0 = new Date('2030-01-01T00:00:00Z');
    const inTx: bigint[] = [];
    const lone: Promise<bigint>[] = [];
    for (let round = 0; round < 6; round++) {
      await Promise.all(
        Array.from({ length: 100 }, (_, i) => {
          if (i % 10 === 0) lone.push(store.nextSerial());
          return store.transaction(async (tx) => {
            const serial = await tx.nextSerial();
            await tx.appendAudit({ at: T0, actor: 'system', action: 'test', target: null, remoteAddr: null, outcome: 'ok', details: { serial: serial.toString() } });
            if (i % 7 === 3) throw new Error('rolled back');
            inTx.push(serial);
          }).catch(() => undefined);
        }),
      );
    }
    const all = [...inTx, ...(await Promise.all(lone))];
    t.is(new Set(all).size, all.length);
    t.false(all.includes(0n));
    // audit ids follow commit order; the serials recorded with them grow too
    const events = [];
    let cursor: string | null = null;
    do {
      const page = await store.listAudit({ action: 'test', cursor, limit: 1000 });
      events.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
    const committed = events.map((e) => BigInt(e.details.serial as string));
    t.is(committed.length, inTx.length);
    t.true(committed.every((s, i) => i === 0 || s > committed[i - 1]!));
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});
