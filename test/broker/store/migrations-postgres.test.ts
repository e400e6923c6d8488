/**
 * Issue #13, first step: the shipped migrations (001, 002: the portable
 * knex schema builder) run unchanged on a real PostgreSQL, and the
 * constraints the store's atomicity rests on are there and enforced by
 * PostgreSQL itself: the role CHECK that 002 widened (proxy accepted, an
 * unknown role refused), one serial_counter row, port blocks with
 * first <= last, a device holding at most one block, unique token hashes.
 * The store does not run on PostgreSQL yet; this only covers the schema.
 */
import test from 'ava';
import knex, { type Knex } from 'knex';
import { MIGRATIONS, migrationSource } from '../../../broker/store/migrations/index.js';
import { createTestDatabase, startPostgres, type PostgresCluster, type TestDatabase } from '../../../testkit/postgres.js';

let cluster: PostgresCluster | undefined;
let database: TestDatabase | undefined;
let db: Knex | undefined;

test.before(async () => {
  cluster = await startPostgres();
  database = await createTestDatabase(cluster);
  db = knex({ client: 'pg', connection: database.url, log: { warn: () => {}, error: () => {}, debug: () => {}, deprecate: () => {} } });
});

test.after.always(async () => {
  await db?.destroy();
  await cluster?.stop();
});

function store(): Knex {
  if (!db) throw new Error('PostgreSQL did not start');
  return db;
}

/** The SQLSTATE of a failed statement (23514 check_violation, 23505 unique_violation). */
async function sqlState(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code;
  }
}

test.serial('every migration applies on PostgreSQL; a second run has nothing to do', async (t) => {
  const [batch, applied] = (await store().migrate.latest({ migrationSource, tableName: 'knex_migrations' })) as [number, string[]];
  t.is(batch, 1);
  t.deepEqual(applied, MIGRATIONS.map((m) => m.name));
  const [, again] = (await store().migrate.latest({ migrationSource, tableName: 'knex_migrations' })) as [number, string[]];
  t.deepEqual(again, []);
  for (const table of ['enrollment_tokens', 'devices', 'port_blocks', 'certificates', 'serial_counter', 'api_keys', 'renew_nonces', 'audit_events', 'meta']) {
    t.true(await store().schema.hasTable(table), table);
  }
  t.true(await store().schema.hasColumn('api_keys', 'expires_at'));
  t.deepEqual(await store()('serial_counter').select('id', 'value'), [{ id: 1, value: '0' }]); // int8 comes back as a string
  t.deepEqual(await store()('meta').select('key', 'value'), [{ key: 'krl_version', value: '0' }]);
});

test.serial('the constraints hold on PostgreSQL', async (t) => {
  const key = { name: 'k', key_hash: 'h', created_at: 1, created_by: 'test' };
  await store()('api_keys').insert({ ...key, id: 'proxy-key', role: 'proxy' });
  t.is(await sqlState(store()('api_keys').insert({ ...key, id: 'bad-role', role: 'root' })), '23514');
  t.is(await sqlState(store()('serial_counter').insert({ id: 2, value: 0 })), '23514');
  t.is(await sqlState(store()('port_blocks').insert({ first_port: 20010, last_port: 20001 })), '23514');

  const token = { created_at: 1, created_by: 'test', expires_at: 2 };
  await store()('enrollment_tokens').insert({ ...token, id: 't1', token_hash: 'same' });
  t.is(await sqlState(store()('enrollment_tokens').insert({ ...token, id: 't2', token_hash: 'same' })), '23505');

  await store()('devices').insert({ id: 'd1', public_key: 'k', key_fingerprint: 'f1', created_at: 1 });
  await store()('port_blocks').insert({ first_port: 20000, last_port: 20001, device_id: 'd1' });
  t.is(await sqlState(store()('port_blocks').insert({ first_port: 20002, last_port: 20003, device_id: 'd1' })), '23505');
  t.is(await sqlState(store()('port_blocks').insert({ first_port: 20000, last_port: 20001 })), '23505');
  t.is((await store()('api_keys').where({ id: 'bad-role' })).length, 0);
});

test.serial('003 names api_keys constraints properly on PostgreSQL, and every migration rolls back and re-applies', async (t) => {
  const constraints = async () =>
    (
      (await store().raw(`SELECT conname FROM pg_constraint WHERE conrelid = 'api_keys'::regclass ORDER BY conname`)) as { rows: { conname: string }[] }
    ).rows.map((r) => r.conname);
  t.deepEqual(await constraints(), ['api_keys_pkey', 'api_keys_role_check']);
  t.true(await store().schema.hasTable('nodes'));
  t.true(await store().schema.hasColumn('devices', 'node_id'));
  await store()('api_keys').where({ role: 'proxy' }).delete(); // 002's down refuses proxy keys
  while (((await store().migrate.rollback({ migrationSource, tableName: 'knex_migrations' })) as [number, string[]])[1].length > 0);
  t.false(await store().schema.hasTable('api_keys'));
  const [, applied] = (await store().migrate.latest({ migrationSource, tableName: 'knex_migrations' })) as [number, string[]];
  t.deepEqual(applied, MIGRATIONS.map((m) => m.name));
  t.deepEqual(await constraints(), ['api_keys_pkey', 'api_keys_role_check']);
});
