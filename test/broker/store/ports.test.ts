/** Port blocks (broker/store/ports.ts): unique under concurrency, exhaustion, quarantine, the pool's layout. */
import { isBrokerError } from '../../../broker/core/errors.js';
import { poolBlockCount, poolBlocks, type PortPool } from '../../../broker/core/port-pool.js';
import { tokenStatus } from '../../../broker/core/tokens.js';
import type { PortBlock } from '../../../broker/store/index.js';
import { HOUR, POOL, T0, at, countRows, device, enroll, token, withStore, test } from './fixtures.js';

test('ok/300 concurrent enrollments: distinct blocks and serials', async (t) => {
  await withStore(async (store) => {
    const toks = Array.from({ length: 300 }, () => token());
    await store.insertTokens(toks);
    const results = await Promise.all(toks.map((tok) => store.transaction((tx) => enroll(tx, tok))));
    const serials = new Set(results.map((r) => r.serial));
    t.is(serials.size, 300);
    t.false(serials.has(0n));
    const blocks = results.map((r) => r.block).sort((a, b) => a.first - b.first);
    for (const [i, b] of blocks.entries()) {
      t.is(b.last - b.first + 1, POOL.perDevice);
      if (i > 0) t.true(b.first > blocks[i - 1]!.last, 'blocks overlap');
    }
    const first = await store.findDevice(results[0]!.deviceId);
    t.deepEqual([first?.portFirst, first?.portLast], [results[0]!.block.first, results[0]!.block.last]);
    t.deepEqual(await store.portPoolUsage(POOL, T0), { total: 5000, allocated: 300, quarantined: 0, free: 4700 });
  });
});

test('fail/pool exhausted leaves nothing behind', async (t) => {
  await withStore(async (store, file) => {
    const pool = { first: 20000, last: 20004, perDevice: 2 }; // room for 2 blocks
    const toks = [token(), token(), token()];
    await store.insertTokens(toks);
    for (const tok of toks.slice(0, 2)) await store.transaction((tx) => enroll(tx, tok, pool));
    const tables = ['devices', 'port_blocks', 'certificates'];
    const before = await Promise.all(tables.map((tb) => countRows(file, tb)));
    const err = await t.throwsAsync(store.transaction((tx) => enroll(tx, toks[2]!, pool)));
    t.true(isBrokerError(err, 'PORT_POOL_EXHAUSTED'));
    t.deepEqual(await Promise.all(tables.map((tb) => countRows(file, tb))), before);
    t.is(tokenStatus((await store.findTokenByHash(toks[2]!.tokenHash))!, T0), 'active');
    t.deepEqual(await store.portPoolUsage(pool, T0), { total: 2, allocated: 2, quarantined: 0, free: 0 });
  });
});

test('ok/quarantine: a released block is reused only after every certificate naming it expired', async (t) => {
  await withStore(async (store) => {
    const pool = { first: 20000, last: 20005, perDevice: 2 };
    const alloc = async (now: Date) => {
      const d = device();
      await store.insertDevice(d);
      return store.allocatePortBlock(d.id, pool, now);
    };
    const old = device();
    await store.insertDevice(old);
    t.deepEqual(await store.allocatePortBlock(old.id, pool, T0), { first: 20000, last: 20001 });
    // a certificate valid 3 h outlives the requested 1 h quarantine
    const serial = await store.nextSerial();
    await store.insertCertificate({
      serial, deviceId: old.id, kind: 'device', keyFingerprint: old.keyFingerprint, keyId: `device:${old.id}`,
      principal: 'ports-20000-20001', validAfter: T0, validBefore: at(3 * HOUR), issuedAt: T0,
    });
    t.true(await store.markDeviceRevoked(old.id, 'apikey:admin', 'stolen', T0));
    t.false(await store.markDeviceRevoked(old.id, 'apikey:admin', 'again', T0));
    t.is(await store.revokeCertificatesOfDevice(old.id, T0), 1);
    t.true(await store.releasePortBlock(old.id, { quarantineUntil: at(HOUR), now: T0 }));
    t.deepEqual(await store.portPoolUsage(pool, at(2 * HOUR)), { total: 3, allocated: 0, quarantined: 1, free: 2 });
    t.deepEqual(await alloc(at(2 * HOUR)), { first: 20002, last: 20003 }); // still quarantined
    t.deepEqual(await alloc(at(3 * HOUR)), { first: 20000, last: 20001 }); // reused, lowest first
    t.deepEqual(await alloc(at(3 * HOUR)), { first: 20004, last: 20005 });
    t.deepEqual(await store.listRevokedUnexpiredSerials(at(2 * HOUR)), [serial]);
    t.deepEqual(await store.listRevokedUnexpiredSerials(at(3 * HOUR)), []);
    t.deepEqual(await store.listRevokedDeviceIds(), [old.id]);
  });
});

test('ok/the allocator hands out exactly the blocks of port-pool.ts\'s layout, never a trailing partial one', async (t) => {
  await withStore(async (store) => {
    const pool: PortPool = { first: 20001, last: 20011, perDevice: 3 }; // 3 whole blocks, 2 ports over
    const allocate = async (): Promise<PortBlock> => {
      const d = device();
      await store.insertDevice(d);
      return store.allocatePortBlock(d.id, pool, T0);
    };
    const blocks: PortBlock[] = [];
    for (let i = 0; i < poolBlockCount(pool); i++) blocks.push(await allocate());
    t.deepEqual(blocks, [...poolBlocks(pool)]);
    t.true(isBrokerError(await t.throwsAsync(allocate()), 'PORT_POOL_EXHAUSTED'));
    t.deepEqual(await store.portPoolUsage(pool, T0), { total: poolBlockCount(pool), allocated: 3, quarantined: 0, free: 0 });
  });
});

test('fail/an invalid pool: CONFIG_INVALID, nothing allocated', async (t) => {
  await withStore(async (store) => {
    const d = device();
    await store.insertDevice(d);
    const pools: [string, PortPool][] = [
      ['fail/port-zero', { first: 0, last: 10, perDevice: 2 }],
      ['fail/past-65535', { first: 65535, last: 65536, perDevice: 2 }],
      ['fail/smaller-than-a-block', { first: 20000, last: 20000, perDevice: 2 }],
      ['fail/empty-block', { first: 20000, last: 20009, perDevice: 0 }],
      ['fail/not-whole', { first: 20000.5, last: 20009, perDevice: 2 }],
    ];
    for (const [name, pool] of pools) {
      t.true(isBrokerError(await t.throwsAsync(store.allocatePortBlock(d.id, pool, T0)), 'CONFIG_INVALID'), name);
      t.true(isBrokerError(await t.throwsAsync(store.portPoolUsage(pool, T0)), 'CONFIG_INVALID'), name);
    }
    t.is((await store.findDevice(d.id))?.portFirst, null);
  });
});
