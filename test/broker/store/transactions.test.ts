/**
 * Store.transaction through openStore: rollback of everything a throwing
 * transaction did, group commit as callers see it (broker/store/open.ts,
 * group-commit.ts), reads outside a transaction, and what a Store call
 * awaited inside one gets.
 */
import { isBrokerError } from '../../../broker/core/errors.js';
import { tokenStatus } from '../../../broker/core/tokens.js';
import { openStore, type StoreTx } from '../../../broker/store/index.js';
import { HOUR, T0, at, audit, countRows, enroll, sql, token, withStore, test, currentBackend } from './fixtures.js';

test('fail/a throwing transaction rolls back everything', async (t) => {
  await withStore(async (store, file) => {
    const tok = token();
    await store.insertTokens([tok]);
    const tables = ['devices', 'port_blocks', 'certificates', 'audit_events'];
    const before = await Promise.all(tables.map((tb) => countRows(file, tb)));
    const boom = new Error('boom');
    const err = await t.throwsAsync(
      store.transaction(async (tx) => {
        const r = await enroll(tx, tok);
        await tx.insertCertificate({
          serial: r.serial, deviceId: r.deviceId, kind: 'device', keyFingerprint: 'x', keyId: 'k',
          principal: 'p', validAfter: T0, validBefore: at(HOUR), issuedAt: T0,
        });
        await tx.appendAudit({ at: T0, actor: 'system', action: 'device.enroll', target: r.deviceId, remoteAddr: null, outcome: 'ok' });
        throw boom;
      }),
    );
    t.is(err, boom); // the caller's error, unchanged
    t.deepEqual(await Promise.all(tables.map((tb) => countRows(file, tb))), before);
    t.is(tokenStatus((await store.findTokenByHash(tok.tokenHash))!, T0), 'active');
    // The counter rolled back too: the transaction's own increment (1) is
    // gone; what may be there is a block of 128 reserved apart from it
    // (broker/store/serials.ts).
    const [counter] = await sql<{ value: number }>(file, 'SELECT value FROM serial_counter');
    t.is(counter!.value % 128, 0);
  });
});

test.sqlite('fail/Store write awaited inside a transaction: STORE_BUSY; a tx kept past its transaction: INTERNAL', async (t) => {
  await withStore(async (_store, file) => {
    const store = await openStore({ filename: file, acquireTimeoutMs: 200 });
    try {
      const err = await t.throwsAsync(store.transaction(() => store.pruneNonces(T0)));
      t.true(isBrokerError(err, 'STORE_BUSY'));
      // a read runs on a read connection: no deadlock, the committed state
      t.deepEqual(await store.transaction(() => store.countDevicesByStatus()), { active: 0, revoked: 0, online: 0 });
      let leaked: StoreTx | undefined;
      await store.transaction(async (tx) => {
        leaked = tx;
      });
      t.true(isBrokerError(await t.throwsAsync(leaked!.countDevicesByStatus()), 'INTERNAL'));
    } finally {
      await store.close();
    }
  });
});

test('fail/a tx kept past its transaction: its statements are refused (INTERNAL), never run on a connection someone else now holds', async (t) => {
  await withStore(async (store) => {
    let leaked: StoreTx | undefined;
    await store.transaction(async (tx) => {
      leaked = tx;
    });
    t.true(isBrokerError(await t.throwsAsync(leaked!.countDevicesByStatus()), 'INTERNAL'));
    t.true(isBrokerError(await t.throwsAsync(leaked!.appendAudit(audit(1))), 'INTERNAL'));
    t.deepEqual(await store.listAudit({ action: 'test' }), { items: [], nextCursor: null });
  });
});

test('store ok/concurrent transactions with one failing: only it rolls back, serials stay unique and in commit order', async (t) => {
  await withStore(async (store) => {
    const boom = new Error('boom');
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) =>
        store.transaction(async (tx) => {
          const [serial] = await Promise.all([tx.nextSerial(), tx.appendAudit(audit(i))]);
          if (i === 17) throw boom;
          return serial;
        }),
      ),
    );
    t.is((results[17] as PromiseRejectedResult).reason, boom);
    const serials = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<bigint>).value);
    const events = (await store.listAudit({ action: 'test' })).items.map((e) => e.details.i as number);
    const others = Array.from({ length: 40 }, (_, i) => i).filter((i) => i !== 17);
    if (currentBackend() === 'sqlite') {
      // One writer, FIFO: the failing member's counter increment was rolled back with it, and commit order is submission order.
      t.deepEqual(serials, Array.from({ length: 39 }, (_, i) => BigInt(i + 1)));
      t.deepEqual(events, others);
    } else {
      // Several writers: unique serials, every event but the failing one's, in no promised order.
      t.is(new Set(serials).size, 39);
      t.true(serials.every((s) => s > 0n));
      t.deepEqual([...events].sort((a, b) => a - b), others);
    }
  });
});

test('store ok/a read outside the transaction sees only committed state; after the write resolves, it sees the write', async (t) => {
  await withStore(async (store) => {
    await store.transaction(async (tx) => {
      await tx.appendAudit(audit(1));
      t.is((await tx.listAudit({ action: 'test' })).items.length, 1);
      t.is((await store.listAudit({ action: 'test' })).items.length, 0); // another connection, last commit
    });
    t.is((await store.listAudit({ action: 'test' })).items.length, 1);
    await store.appendAudit(audit(2));
    t.is((await store.listAudit({ action: 'test' })).items.length, 2);
  });
});

test.sqlite('store ok/audit events of a batch: a member reading them sees earlier members\' events; its rollback does not lose them', async (t) => {
  await withStore(async (store) => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const running = new Promise<void>((r) => (entered = r));
    const first = store.transaction(async (tx) => {
      await tx.appendAudit(audit(0));
      entered();
      await held;
    });
    await running; // what follows queues behind it: one batch
    const seen: unknown[] = [];
    const rest = [
      store.transaction((tx) => tx.appendAudit(audit(1))),
      store.transaction(async (tx) => {
        seen.push(...(await tx.listAudit({ action: 'test' })).items.map((e) => e.details.i));
        await tx.appendAudit(audit(2));
        throw new Error('rolls back');
      }),
      store.appendAudit(audit(3)),
    ];
    release();
    await first;
    t.deepEqual((await Promise.allSettled(rest)).map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
    t.deepEqual(seen, [0, 1]);
    t.deepEqual((await store.listAudit({ action: 'test' })).items.map((e) => e.details.i), [0, 1, 3]);
  });
});

test('store fail/a malformed audit event fails its own transaction, at the call', async (t) => {
  await withStore(async (store) => {
    const err = await t.throwsAsync(store.transaction((tx) => tx.appendAudit({ ...audit(1), actor: null as unknown as string })));
    t.true(isBrokerError(err, 'INTERNAL'));
    await store.appendAudit(audit(2));
    t.deepEqual((await store.listAudit({ action: 'test' })).items.map((e) => e.details.i), [2]);
  });
});

test.sqlite('store fail/a Store write awaited inside a transaction: STORE_BUSY after the timeout, and nothing of it commits', async (t) => {
  await withStore(async (store) => {
    const err = await t.throwsAsync(
      store.transaction(async (tx) => {
        await tx.appendAudit(audit(1));
        await store.appendAudit(audit(2));
      }),
    );
    t.true(isBrokerError(err, 'STORE_BUSY'));
    t.deepEqual(await store.listAudit({ action: 'test' }), { items: [], nextCursor: null });
  }, { acquireTimeoutMs: 200 });
});
