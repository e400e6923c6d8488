import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sqlite3 from 'sqlite3';
import { isBrokerError } from '../../../broker/core/errors.js';
import { openStore, tokenStatus, type NewDevice, type NewToken, type Store, type StoreTx } from '../../../broker/store/index.js';

const T0 = new Date('2030-01-01T00:00:00Z');
const at = (ms: number) => new Date(T0.getTime() + ms);
const HOUR = 3_600_000;
const POOL = { first: 20000, last: 29999, perDevice: 2 };

async function withStore<T>(fn: (store: Store, file: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-store-'));
  const file = join(dir, 'certunnel.db');
  const store = await openStore({ filename: file });
  try {
    return await fn(store, file);
  } finally {
    await store.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** Raw SQLite access, for what the Store deliberately does not expose. */
async function sql<T>(file: string, query: string, params: unknown[] = []): Promise<T[]> {
  const db = await new Promise<sqlite3.Database>((res, rej) => {
    const d = new sqlite3.Database(file, (err) => (err ? rej(err) : res(d)));
  });
  try {
    return await new Promise<T[]>((res, rej) => db.all(query, params, (err, rows) => (err ? rej(err) : res(rows as T[]))));
  } finally {
    await new Promise((res) => db.close(res));
  }
}

const rnd = () => randomBytes(10).toString('hex');
const token = (over: Partial<NewToken> = {}): NewToken => ({
  id: `tok_${rnd()}`,
  tokenHash: rnd(),
  batch: null,
  bindName: null,
  bindSerial: null,
  createdAt: T0,
  createdBy: 'apikey:test',
  expiresAt: at(24 * HOUR),
  ...over,
});
const device = (over: Partial<NewDevice> = {}): NewDevice => ({
  id: `dev_${rnd()}`,
  name: null,
  hardwareSerial: null,
  publicKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test',
  keyFingerprint: `SHA256:${rnd()}`,
  labels: {},
  tokenId: null,
  createdAt: T0,
  ...over,
});
const countRows = (file: string, table: string) => sql<{ n: number }>(file, `SELECT COUNT(*) AS n FROM ${table}`).then((r) => r[0]!.n);

/** The enrollment transaction's store part, as the broker core will run it. */
async function enroll(tx: StoreTx, t: NewToken, pool = POOL, now = T0) {
  const d = device({ tokenId: t.id });
  if (!(await tx.redeemToken(t.tokenHash, d.id, now))) throw new Error('token refused');
  await tx.insertDevice(d);
  const block = await tx.allocatePortBlock(d.id, pool, now);
  const serial = await tx.nextSerial();
  return { deviceId: d.id, block, serial };
}

test('ok/migrations run once; re-open keeps data; read-only open refuses writes', async (t) => {
  await withStore(async (store, file) => {
    await store.insertTokens([token({ id: 'tok_keep' })]);
    await store.close();
    // a clean close (cached statements finalized) checkpoints and removes the WAL
    t.false(existsSync(`${file}-wal`));
    const again = await openStore({ filename: file });
    await again.close();
    t.deepEqual(await sql(file, 'SELECT name FROM knex_migrations'), [{ name: '001-initial' }]);
    const ro = await openStore({ filename: file, readonly: true });
    try {
      t.is((await ro.listTokens({ now: T0 })).items[0]?.id, 'tok_keep');
      const err = await t.throwsAsync(ro.insertTokens([token()]));
      t.true(isBrokerError(err, 'INTERNAL'));
    } finally {
      await ro.close();
    }
    const missing = await t.throwsAsync(openStore({ filename: `${file}.missing`, readonly: true }));
    t.true(isBrokerError(missing, 'CONFIG_INVALID'));
  });
});

test('ok/WAL journal, foreign keys enforced', async (t) => {
  await withStore(async (store, file) => {
    t.deepEqual(await sql(file, 'PRAGMA journal_mode'), [{ journal_mode: 'wal' }]);
    const err = await t.throwsAsync(store.allocatePortBlock('dev_missing', POOL, T0));
    t.true(isBrokerError(err, 'DEVICE_UNKNOWN'));
  });
});

test('ok/50 concurrent redemptions of one token: exactly one wins', async (t) => {
  await withStore(async (store) => {
    const tok = token();
    await store.insertTokens([tok]);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => store.redeemToken(tok.tokenHash, `dev_${i}`, T0)));
    t.is(results.filter(Boolean).length, 1);
    const found = await store.findTokenByHash(tok.tokenHash);
    t.is(found && tokenStatus(found, T0), 'used');
    t.is(found?.usedByDevice, `dev_${results.indexOf(true)}`);
  });
});

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

test('fail/Store write awaited inside a transaction: STORE_BUSY; a tx kept past its transaction: INTERNAL', async (t) => {
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

const NASTY = [`' OR 1=1 --`, `"; DROP TABLE devices; --`, '100%_\\'];

test('ok/injection-shaped strings are data: stored verbatim, match only themselves', async (t) => {
  await withStore(async (store) => {
    await store.insertDevice(device({ name: 'plain', labels: { site: 'hall' } }));
    for (const s of NASTY) {
      await store.insertDevice(device({ name: s, labels: { [s]: s, site: s } }));
      await store.insertTokens([token({ batch: s, bindName: s })]);
    }
    await store.insertTokens([token({ batch: 'plain' })]);
    for (const s of NASTY) {
      const found = await store.findDeviceByName(s);
      t.is(found?.name, s);
      t.deepEqual(found?.labels, { [s]: s, site: s });
      t.deepEqual((await store.listDevices({ nameContains: s })).items.map((d) => d.name), [s]);
      t.deepEqual((await store.listDevices({ label: { key: 'site', value: s } })).items.map((d) => d.name), [s]);
      t.deepEqual((await store.listDevices({ label: { key: s, value: s } })).items.map((d) => d.name), [s]);
      const toks = (await store.listTokens({ batch: s, now: T0 })).items;
      t.deepEqual(toks.map((x) => [x.batch, x.bindName]), [[s, s]]);
    }
    t.deepEqual((await store.listDevices({ nameContains: '%' })).items.map((d) => d.name), ['100%_\\']);
    t.deepEqual((await store.listDevices({ label: { key: 'site', value: 'hall' } })).items.map((d) => d.name), ['plain']);
    t.is((await store.countDevicesByStatus()).active, 4);
  });
});

test('fail/duplicate fingerprint or name: stable codes, no SQL in messages', async (t) => {
  await withStore(async (store) => {
    const a = device({ name: 'kiosk-1' });
    const b = device({ name: 'kiosk-2' });
    await store.insertDevice(a);
    await store.insertDevice(b);
    const cases = [
      ['KEY_ALREADY_ENROLLED', store.insertDevice(device({ keyFingerprint: a.keyFingerprint }))],
      ['NAME_TAKEN', store.insertDevice(device({ name: 'kiosk-1' }))],
      ['KEY_ALREADY_ENROLLED', store.updateDeviceKey(b.id, 'ssh-ed25519 AAAA new', a.keyFingerprint)],
    ] as const;
    for (const [code, promise] of cases) {
      const err = await t.throwsAsync(promise);
      t.true(isBrokerError(err, code), `${code}: ${String(err)}`);
      t.notRegex(err!.message, /insert|update|devices|SQLITE/i);
    }
    t.true(await store.updateDeviceKey(b.id, 'ssh-ed25519 AAAA new', 'SHA256:new'));
    t.is((await store.findDeviceByFingerprint('SHA256:new'))?.id, b.id);
    const err = await t.throwsAsync(store.insertTokens([token({ id: 'tok_same' }), token({ id: 'tok_same' })]));
    t.true(isBrokerError(err, 'INTERNAL'));
    t.notRegex(`${err!.message} ${String((err as Error).cause)}`, /insert into|values|tok_same/i);
  });
});

test('ok/serials are 64-bit exact and stop before overflowing', async (t) => {
  await withStore(async (store, file) => {
    const max = 2n ** 63n - 1n;
    await store.insertDevice(device({ id: 'dev_x' }));
    const cert = {
      serial: max, deviceId: 'dev_x', kind: 'device', keyFingerprint: 'f', keyId: 'device:dev_x',
      principal: 'ports-1-2', validAfter: T0, validBefore: at(HOUR), issuedAt: T0,
    } as const;
    await store.insertCertificate(cert);
    t.deepEqual(await store.findCertificate(max), { ...cert, revokedAt: null });
    t.is(await store.findCertificate(max - 1n), null);
    t.false(await store.isSerialRevoked(max));
    await store.revokeCertificatesOfDevice('dev_x', T0);
    t.true(await store.isSerialRevoked(max));
    t.deepEqual(await store.listRevokedUnexpiredSerials(T0), [max]);
    await store.close();
    await sql(file, `UPDATE serial_counter SET value = 9223372036854775806`);
    const reopened = await openStore({ filename: file });
    try {
      t.is(await reopened.nextSerial(), max);
      const err = await t.throwsAsync(reopened.nextSerial());
      t.true(isBrokerError(err, 'INTERNAL'));
      t.is(await reopened.nextKrlVersion(), 1n);
      t.is(await reopened.nextKrlVersion(), 2n);
    } finally {
      await reopened.close();
    }
  });
});

test('ok/tokens: why redemption fails, revocation by batch, pagination', async (t) => {
  await withStore(async (store) => {
    const [used, expired, revoked, fresh] = [token(), token({ expiresAt: at(HOUR) }), token({ batch: 'b1' }), token({ batch: 'b1' })];
    await store.insertTokens([used!, expired!, revoked!, fresh!]);
    t.true(await store.redeemToken(used!.tokenHash, 'dev_1', T0));
    t.is(await store.revokeTokens({ id: revoked!.id }, 'apikey:a', T0), 1);
    t.is(await store.revokeTokens({ id: used!.id }, 'apikey:a', T0), 0); // used: untouched
    const now = at(2 * HOUR);
    for (const [tok, status] of [[used, 'used'], [expired, 'expired'], [revoked, 'revoked'], [fresh, 'active']] as const) {
      t.is(tokenStatus((await store.findTokenByHash(tok!.tokenHash))!, now), status);
      t.is(await store.redeemToken(tok!.tokenHash, 'dev_2', now), status === 'active', status);
    }
    t.is(await store.findTokenByHash('unknown'), null);
    t.is(await store.revokeTokens({ batch: 'b1' }, 'apikey:a', now), 0); // fresh was just redeemed
    const many = Array.from({ length: 7 }, (_, i) => token({ batch: 'b2', createdAt: at(i % 3) }));
    await store.insertTokens(many);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await store.listTokens({ batch: 'b2', status: 'active', now, limit: 3, cursor });
      t.true(page.items.length <= 3);
      seen.push(...page.items.map((x) => x.id));
      cursor = page.nextCursor;
    } while (cursor);
    t.deepEqual(seen.sort(), many.map((x) => x.id).sort());
    t.is(await store.revokeTokens({ batch: 'b2' }, 'apikey:a', now), 7);
    t.deepEqual((await store.listTokens({ status: 'revoked', now })).items.length, 8);
    const bad = await t.throwsAsync(store.listTokens({ now, cursor: 'garbage' }));
    t.true(isBrokerError(bad, 'BAD_REQUEST'));
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

test('ok/findDeviceWithLatestCertificate agrees with findDevice and latestCertificateOfDevice', async (t) => {
  await withStore(async (store) => {
    const d = device({ name: 'kiosk', labels: { site: 'hall' } });
    await store.insertDevice(d);
    await store.allocatePortBlock(d.id, POOL, T0);
    const both = async () => [await store.findDevice(d.id), await store.latestCertificateOfDevice(d.id)];
    const combined = async () => {
      const found = await store.findDeviceWithLatestCertificate(d.id);
      return [found?.device ?? null, found?.latest ?? null];
    };
    t.deepEqual(await combined(), await both());
    t.is((await combined())[1], null);
    const cert = (serial: bigint, kind: 'device' | 'operator', validBefore: Date) => ({
      serial, deviceId: d.id, kind, keyFingerprint: d.keyFingerprint, keyId: `device:${d.id}`,
      principal: 'ports-20000-20001', validAfter: T0, validBefore, issuedAt: T0,
    });
    await store.insertCertificate(cert(5n, 'device', at(HOUR)));
    await store.insertCertificate(cert(9n, 'device', at(2 * HOUR)));
    await store.insertCertificate(cert(12n, 'operator', at(3 * HOUR))); // not a device certificate
    await store.revokeCertificatesOfDevice(d.id, at(1));
    t.deepEqual(await combined(), await both());
    t.is(((await combined())[1] as { serial: bigint }).serial, 9n);
    t.is(await store.findDeviceWithLatestCertificate('dev_missing'), null);
  });
});
