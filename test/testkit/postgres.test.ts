/**
 * testkit/postgres.ts, the throwaway PostgreSQL cluster of issue #13's tests:
 * it starts (as an unprivileged user when we are root), `pg` and knex
 * (`client: 'pg'`) reach it with the URL's password, the atomicity
 * primitive the store will lean on holds (50 parallel
 * `INSERT … ON CONFLICT DO NOTHING RETURNING` on one key: exactly one row
 * comes back), databases made per test are separate, and stop() closes the
 * port and removes the directory. No skip: without PostgreSQL this fails and
 * says to run .ci/run.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import knex from 'knex';
import pg from 'pg';
import { isListening } from '../../testkit/net.js';
import { createTestDatabase, postgresBinDir, startPostgres, type PostgresCluster } from '../../testkit/postgres.js';

let cluster: PostgresCluster | undefined;

test.before(async () => {
  postgresBinDir(); // throws the message that names .ci/run
  cluster = await startPostgres();
});

test.after.always(async () => {
  await cluster?.stop();
});

function running(): PostgresCluster {
  if (!cluster) throw new Error('the cluster did not start');
  return cluster;
}

test('without the server binaries, the error names .ci/run; with several versions, the newest wins', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'certunnel-pgbin-'));
  try {
    t.throws(() => postgresBinDir(root, join(root, 'no-pg_config')), { message: /\.ci\/run/ });
    for (const version of ['9', '15', '13']) {
      await mkdir(join(root, version, 'bin'), { recursive: true });
      for (const bin of ['initdb', 'pg_ctl']) await writeFile(join(root, version, 'bin', bin), '');
    }
    await mkdir(join(root, '16', 'bin'), { recursive: true }); // no binaries: not a candidate
    t.is(postgresBinDir(root, join(root, 'no-pg_config')), join(root, '15', 'bin'));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test.serial('the cluster listens on 127.0.0.1, needs the password, and does not run as root', async (t) => {
  const c = running();
  t.true(await isListening(c.port));
  const client = new pg.Client({ connectionString: c.url });
  await client.connect();
  try {
    const { rows } = await client.query<{ user: string; addr: string | null }>('SELECT current_user AS user, inet_server_addr()::text AS addr');
    t.is(rows[0]?.user, 'certunnel');
    t.is(rows[0]?.addr, '127.0.0.1/32');
    const { rows: pids } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const backend = pids[0]?.pid;
    t.truthy(backend);
    if (process.getuid?.() === 0) {
      const status = await readFile(`/proc/${backend}/status`, 'utf8');
      const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
      t.not(uid, '0', 'the server must not run as root');
    }
  } finally {
    await client.end();
  }
  const wrong = new URL(c.url);
  wrong.password = 'not-the-password';
  const intruder = new pg.Client({ connectionString: wrong.toString() });
  const err = await t.throwsAsync(intruder.connect());
  t.is((err as Error & { code?: string }).code, '28P01'); // invalid_password
  await intruder.end().catch(() => {});
});

test.serial('50 parallel INSERT … ON CONFLICT DO NOTHING RETURNING on one key through knex: exactly one row returned', async (t) => {
  const db = await createTestDatabase(running());
  const k = knex({ client: 'pg', connection: db.url, pool: { min: 0, max: 20 } });
  try {
    await k.schema.createTable('tokens', (table) => {
      table.text('id').primary();
      table.integer('redeemer').notNullable();
    });
    const attempts = await Promise.all(
      Array.from({ length: 50 }, (_, i) => k('tokens').insert({ id: 'one-key', redeemer: i }).onConflict('id').ignore().returning('redeemer')),
    );
    const won = attempts.filter((rows) => rows.length === 1);
    t.is(won.length, 1);
    t.is(attempts.filter((rows) => rows.length === 0).length, 49);
    const stored = await k('tokens').select('id', 'redeemer');
    t.deepEqual(stored, [{ id: 'one-key', redeemer: (won[0]?.[0] as { redeemer: number }).redeemer }]);
  } finally {
    await k.destroy();
    await db.drop();
  }
});

test.serial('two test databases are separate', async (t) => {
  const c = running();
  const [a, b] = await Promise.all([createTestDatabase(c), createTestDatabase(c)]);
  t.not(a.name, b.name);
  t.regex(a.name, /^t_[0-9a-f]{16}$/);
  const ka = knex({ client: 'pg', connection: a.url });
  const kb = knex({ client: 'pg', connection: b.url });
  try {
    await ka.schema.createTable('only_in_a', (table) => table.integer('n'));
    await ka('only_in_a').insert({ n: 7 });
    t.true(await ka.schema.hasTable('only_in_a'));
    t.false(await kb.schema.hasTable('only_in_a'));
    t.deepEqual(await ka('only_in_a').select('n'), [{ n: 7 }]);
  } finally {
    await ka.destroy();
    await kb.destroy();
  }
  await a.drop();
  await b.drop();
  const admin = new pg.Client({ connectionString: c.url });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ n: string }>('SELECT count(*) AS n FROM pg_database WHERE datname = ANY($1)', [[a.name, b.name]]);
    t.is(rows[0]?.n, '0');
  } finally {
    await admin.end();
  }
});

test.serial('stop() closes the port and removes the directory; a second stop() is harmless', async (t) => {
  const c = running();
  t.true(existsSync(c.dir));
  await c.stop();
  t.false(await isListening(c.port));
  t.false(existsSync(c.dir));
  await c.stop();
});
