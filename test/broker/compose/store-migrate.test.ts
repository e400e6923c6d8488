/**
 * `store migrate` (broker/compose/store-migrate.ts, broker/store/copy.ts):
 * a fleet made on SQLite through the broker's own API is copied into a real
 * PostgreSQL (a throwaway cluster for this file, a fresh database per test)
 * and reads the same there; every refusal has its code and changes nothing
 * (the data directory's files byte for byte, the target's tables and rows).
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import sqlite3 from 'sqlite3';
import { apiRequest, type ApiClientOptions, type EnrollResponse, type MintTokensResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { createLogger, dataPaths, initDataDir, loadConfig, migrateStore, startBroker, MIGRATED_SUFFIX } from '../../../broker/compose/index.js';
import { canonical } from '../../../broker/store/copy-tables.js';
import { inspectDatabase } from '../../../broker/store/copy.js';
import { openStore, type Store } from '../../../broker/store/index.js';
import { runCli, spawnBroker } from '../../../testkit/cli.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../../testkit/postgres.js';

let cluster: PostgresCluster;
/** A fleet made once on SQLite; each test migrates its own copy. */
let fleet: string;

const quiet = () => createLogger('silent', new Writable({ write: (_c, _e, cb) => cb() }));

/** A data directory on SQLite with tokens (a batch half used, one revoked), devices (one revoked), API keys and their audit trail, all through the API. */
async function makeFleet(dir: string): Promise<void> {
  await initDataDir({ dir, config: { api: { listen: '127.0.0.1:0' }, ssh: { listen: '127.0.0.1:0' }, ports: { first: 40000, last: 40999 } } }).then(async (init) => {
    const broker = await startBroker({ config: await loadConfig({ dataDir: dir }), logger: quiet() });
    try {
      const anon: ApiClientOptions = { baseUrl: broker.apiUrl, pin: init.apiPin };
      const admin = { ...anon, apiKey: init.adminKey };
      await apiRequest(admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'ops' });
      const minted = await apiRequest<MintTokensResponse>(admin, 'POST', '/v1/tokens', { count: 6, batch: 'line-1' });
      for (const [i, tok] of minted.tokens.slice(0, 3).entries()) {
        await apiRequest<EnrollResponse>(anon, 'POST', '/v1/enroll', { token: tok.token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: `dev-${i}` });
      }
      await apiRequest(admin, 'POST', '/v1/tokens/revoke', { id: minted.tokens[5]!.id });
      // More than 9 audit rows: integer keys past one digit (the copy must order them as numbers, not text).
      for (const batch of ['line-2', 'line-3', 'line-4']) await apiRequest(admin, 'POST', '/v1/tokens', { count: 1, batch });
      await apiRequest(admin, 'POST', '/v1/devices/dev-1/revoke', { reason: 'stolen' });
    } finally {
      await broker.close();
    }
  });
}

test.before(async () => {
  cluster = await startPostgres();
  fleet = join(await mkdtemp(join(tmpdir(), 'certunnel-migrate-fleet-')), 'data');
  await makeFleet(fleet);
});

test.after.always(async () => {
  await cluster?.stop();
  if (fleet) await rm(join(fleet, '..'), { recursive: true, force: true });
});

async function copyOfFleet(t: ExecutionContext): Promise<string> {
  const parent = await mkdtemp(join(tmpdir(), 'certunnel-migrate-'));
  t.teardown(() => rm(parent, { recursive: true, force: true }));
  const dir = join(parent, 'data');
  await cp(fleet, dir, { recursive: true });
  return dir;
}

/** Every file of DIR (name → SHA-256 of its bytes and its mode): a refusal must leave this as it was. */
async function dirState(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string, prefix: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const path = join(d, e.name);
      if (e.isDirectory()) await walk(path, `${prefix}${e.name}/`);
      // -shm is SQLite's shared-memory index, rewritten by any reader: not content.
      else if (e.name.endsWith('-shm')) continue;
      else out[`${prefix}${e.name}`] = `${createHash('sha256').update(await readFile(path)).digest('hex')} ${((await stat(path)).mode & 0o777).toString(8)}`;
    }
  };
  await walk(dir, '');
  return out;
}

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** The target's tables and their row counts (knex's included). */
async function targetState(url: string): Promise<Record<string, number>> {
  const tables = await query<{ name: string }>(url, "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1");
  const out: Record<string, number> = {};
  for (const { name } of tables) {
    if (name.startsWith('knex_')) continue;
    out[name] = Number((await query<{ n: string }>(url, `SELECT count(*) AS n FROM ${name}`))[0]!.n);
  }
  return out;
}

function sqliteRun(file: string, sql: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const db = new sqlite3.Database(file, (err) => {
      if (err) return reject(err);
      db.run(sql, (e) => db.close(() => (e ? reject(e) : resolve())));
    });
  });
}

/** What the store reads of a fleet, the same on both backends after a copy. */
async function storeView(store: Store): Promise<unknown> {
  const devices = (await store.listDevices({ limit: 1000 })).items;
  return {
    devices,
    tokens: (await store.listTokens({ limit: 1000, now: new Date() })).items,
    apiKeys: await store.listApiKeys(),
    audit: (await store.listAudit({ limit: 1000 })).items,
    revoked: await store.listRevokedDeviceIds(),
    certificates: await Promise.all(devices.map((d) => store.latestCertificateOfDevice(d.id))),
  };
}

test('ok/the whole fleet copied, verified, read the same by the store on PostgreSQL; database.url 0600, the SQLite file kept', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const paths = dataPaths(dir);
  const source = await openStore({ filename: paths.database, readonly: true });
  const before = await storeView(source);
  const sourceAuditCount = await source.countAudit();
  await source.close();
  const sqliteBytes = await readFile(paths.database);

  const result = await migrateStore({ dir, to: db.url, env: {}, logger: quiet(), chunkRows: 2 });

  t.deepEqual(result.tables.map((x) => x.table), [
    'enrollment_tokens', 'devices', 'port_blocks', 'certificates', 'serial_counter', 'api_keys', 'renew_nonces', 'audit_events', 'meta', 'nodes', 'node_join_tokens', 'trust_rotations',
  ]);
  const rows = Object.fromEntries(result.tables.map((x) => [x.table, x.rows]));
  t.true(rows.audit_events! > 9);
  t.like(rows, { enrollment_tokens: 9, devices: 3, port_blocks: 3, api_keys: 2, audit_events: sourceAuditCount, serial_counter: 1, meta: 1 });
  for (const table of result.tables) t.regex(table.sha256, /^[0-9a-f]{64}$/);
  t.false(result.target.includes(new URL(db.url).password), 'the password is never in the result');

  t.is((await readFile(paths.databaseUrl, 'utf8')).trim(), db.url);
  t.is((await stat(paths.databaseUrl)).mode & 0o777, 0o600);
  await t.throwsAsync(stat(paths.database), { code: 'ENOENT' });
  t.deepEqual(await readFile(`${paths.database}${MIGRATED_SUFFIX}`), sqliteBytes, 'the SQLite file is kept as it was');

  const target = await openStore({ filename: paths.database, databaseUrl: db.url });
  try {
    const after = (await storeView(target)) as { audit: Array<{ id: string; action: string }> };
    const migrated = after.audit.find((e) => e.action === 'store.migrate');
    t.truthy(migrated, 'the migration is in the audit trail');
    t.deepEqual({ ...after, audit: after.audit.filter((e) => e !== migrated) }, before as object, 'the store reads the same fleet');
    t.is(await target.countAudit(), sourceAuditCount + 1);
    // Audit ids were kept and the sequence goes on past them.
    await target.appendAudit({ at: new Date(), actor: 'test', action: 'test.after', target: null, remoteAddr: null, outcome: 'ok', details: {} });
    const ids = (await target.listAudit({ limit: 1000 })).items.map((e) => Number(e.id)).sort((a, b) => a - b);
    t.deepEqual(ids, Array.from({ length: sourceAuditCount + 2 }, (_, i) => i + 1));
    t.true((await target.nextSerial()) > 3n, 'serials go on from the SQLite counter');
  } finally {
    await target.close();
  }
});

test('fail/second run: STORE_ALREADY_MIGRATED, nothing changed (the data directory, the target)', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  await migrateStore({ dir, to: db.url, env: {}, logger: quiet() });
  const [files, rows] = [await dirState(dir), await targetState(db.url)];
  const other = await createTestDatabase(cluster);
  for (const to of [db.url, other.url]) {
    await t.throwsAsync(migrateStore({ dir, to, env: {}, logger: quiet() }), { code: 'STORE_ALREADY_MIGRATED' });
  }
  t.deepEqual(await dirState(dir), files);
  t.deepEqual(await targetState(db.url), rows);
  t.deepEqual(await targetState(other.url), {}, 'no tables made in the other database either');
});

test('fail/CERTUNNEL_DATABASE_URL set: STORE_ALREADY_MIGRATED', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const files = await dirState(dir);
  await t.throwsAsync(migrateStore({ dir, to: db.url, env: { CERTUNNEL_DATABASE_URL: db.url }, logger: quiet() }), { code: 'STORE_ALREADY_MIGRATED' });
  t.deepEqual(await dirState(dir), files);
  t.deepEqual(await targetState(db.url), {});
});

test('fail/a broker runs on the directory: DATA_DIR_LOCKED, nothing changed', async (t) => {
  t.timeout(120_000);
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const broker = await spawnBroker(['--data', dir, '--log-level', 'warn']);
  try {
    const files = await dirState(dir);
    await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet() }), { code: 'DATA_DIR_LOCKED' });
    t.deepEqual(await dirState(dir), files);
    t.deepEqual(await targetState(db.url), {}, 'not even the migrations ran on the target');
  } finally {
    await broker.stop();
  }
});

test('fail/a target with tables of its own: DATABASE_NOT_EMPTY, nothing changed', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  await query(db.url, "CREATE TABLE invoices (id int primary key); INSERT INTO invoices VALUES (1)");
  const files = await dirState(dir);
  await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet() }), { code: 'DATABASE_NOT_EMPTY' });
  t.deepEqual(await dirState(dir), files);
  t.deepEqual(await targetState(db.url), { invoices: 1 });
});

test('fail/a target holding another fleet: DATABASE_IN_USE, nothing changed', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const otherDir = join(dir, '..', 'other');
  await initDataDir({ dir: otherDir, config: {}, databaseUrl: db.url });
  const [files, rows] = [await dirState(dir), await targetState(db.url)];
  await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet() }), { code: 'DATABASE_IN_USE' });
  t.deepEqual(await dirState(dir), files);
  t.deepEqual(await targetState(db.url), rows);
});

test('fail/a half-done copy in the target (some tables hold this fleet\'s rows): DATABASE_NOT_EMPTY, nothing changed', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  // The schema, and the tokens copied by hand, as a copy that stopped after its first table would leave it.
  await (await openStore({ filename: '', databaseUrl: db.url })).close();
  const source = await openStore({ filename: dataPaths(dir).database, readonly: true });
  const tokens = (await source.listTokens({ limit: 100, now: new Date() })).items;
  await source.close();
  for (const tok of tokens) {
    await query(db.url, `INSERT INTO enrollment_tokens (id, token_hash, created_at, created_by, expires_at) VALUES ('${tok.id}', 'h-${tok.id}', 1, 'x', 2)`);
  }
  const [files, rows] = [await dirState(dir), await targetState(db.url)];
  await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet() }), { code: 'DATABASE_NOT_EMPTY' });
  t.deepEqual(await dirState(dir), files);
  t.deepEqual(await targetState(db.url), rows);
});

test('fail/a copy that fails midway (a row PostgreSQL refuses, after seven tables went in): MIGRATION_COPY_FAILED, the target empty, the directory untouched; a second run after the fix copies', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const { database } = dataPaths(dir);
  // SQLite does not enforce varchar(255); PostgreSQL does. audit_events is the eighth table copied.
  await sqliteRun(database, `UPDATE audit_events SET actor = '${'x'.repeat(300)}' WHERE id = (SELECT max(id) FROM audit_events)`);
  const files = await dirState(dir);
  const err = await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet(), chunkRows: 2 }), { code: 'MIGRATION_COPY_FAILED' });
  t.regex(err!.message, /audit_events/);
  t.deepEqual(await dirState(dir), files, 'no database.url, the SQLite file where it was, the lock released');
  t.is((await inspectDatabase(db.url)).kind, 'empty', 'the migrations\' schema, no rows');
  t.is(Object.values(await targetState(db.url)).reduce((a, b) => a + b, 0), 2, 'only the migrations\' two seed rows');

  await sqliteRun(database, "UPDATE audit_events SET actor = 'system' WHERE length(actor) > 255");
  const result = await migrateStore({ dir, to: db.url, env: {}, logger: quiet() });
  t.true(result.tables.find((x) => x.table === 'devices')!.rows === 3);
});

test('fail/a copy that does not read back the same (a trigger on the target rewrites a value): MIGRATION_VERIFY_FAILED, the target empty, the directory untouched', async (t) => {
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  await (await openStore({ filename: '', databaseUrl: db.url })).close();
  await query(db.url, `CREATE FUNCTION shout() RETURNS trigger AS $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql;
    CREATE TRIGGER shout BEFORE INSERT ON devices FOR EACH ROW EXECUTE FUNCTION shout()`);
  const files = await dirState(dir);
  const err = await t.throwsAsync(migrateStore({ dir, to: db.url, env: {}, logger: quiet() }), { code: 'MIGRATION_VERIFY_FAILED' });
  t.regex(err!.message, /devices/);
  t.deepEqual(await dirState(dir), files);
  t.is((await inspectDatabase(db.url)).kind, 'empty');
});

test('cli/store migrate --json: per-table counts and checksums; the password never printed; a refusal as a JSON error', async (t) => {
  t.timeout(120_000);
  const dir = await copyOfFleet(t);
  const db = await createTestDatabase(cluster);
  const password = new URL(db.url).password;
  const ok = await runCli(['store', 'migrate', '--data', dir, '--to', db.url, '--json']);
  t.is(ok.code, 0, ok.stderr);
  const out = JSON.parse(ok.stdout) as { target: string; tables: Array<{ table: string; rows: number; sha256: string }> };
  t.is(out.tables.length, 12);
  t.is(out.tables.find((x) => x.table === 'devices')!.rows, 3);
  t.true(out.target.includes(':***@'));
  const again = await runCli(['store', 'migrate', '--data', dir, '--to', db.url, '--json']);
  t.is(again.code, 1);
  t.is((JSON.parse(again.stderr) as { error: { code: string } }).error.code, 'STORE_ALREADY_MIGRATED');
  const text = await runCli(['store', 'migrate', '--data', dir, '--to', db.url]);
  t.regex(text.stderr, /STORE_ALREADY_MIGRATED/);
  for (const r of [ok, again, text]) t.false(`${r.stdout}${r.stderr}`.includes(password), 'the password is never printed');
});

test('canonical: one form for both drivers', (t) => {
  const cases: Array<[unknown, 'int' | 'bool' | 'text', string | null]> = [
    [null, 'int', null], ['9223372036854775807', 'int', '9223372036854775807'], [20000, 'int', '20000'],
    [1, 'bool', '1'], ['1', 'bool', '1'], [true, 'bool', '1'], [0, 'bool', '0'], [false, 'bool', '0'], ['2', 'bool', '2'],
    ['{}', 'text', '{}'], ['', 'text', ''],
  ];
  for (const [value, kind, expected] of cases) t.is(canonical(value, kind), expected, `${String(value)} as ${kind}`);
});
