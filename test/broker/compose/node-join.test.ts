/**
 * broker/compose/node-join.ts on a real PostgreSQL: `node token` seals the
 * cluster's files, `join` writes them into a new data directory with init's
 * modes, and every refusal changes nothing (no directory, the token unused,
 * a wrong database untouched). OpenSSH's ssh-keygen says the keys are node 1's.
 */
import { access, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import pg from 'pg';
import { initDataDir } from '../../../broker/compose/data-dir.js';
import { joinCluster, mintJoinToken } from '../../../broker/compose/node-join.js';
import { runCommand, withTempDir } from '../../../testkit/openssh.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../../testkit/postgres.js';

const test = anyTest as TestFn<{ postgres: PostgresCluster }>;

test.before(async (t) => {
  t.context.postgres = await startPostgres();
});
test.after.always(async (t) => {
  await t.context.postgres?.stop();
});

const LISTEN = { api: { listen: '127.0.0.1:0' }, ssh: { listen: '127.0.0.1:0' } };

async function query<T>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as T[];
  } finally {
    await client.end();
  }
}

/** Node 1 of a cluster (init --database-url) and a join token minted on it. */
async function cluster(t: { context: { postgres: PostgresCluster } }, dir: string) {
  const db = await createTestDatabase(t.context.postgres);
  const node1 = join(dir, 'node1');
  await initDataDir({ dir: node1, config: LISTEN, databaseUrl: db.url });
  const minted = await mintJoinToken({ dataDir: node1, env: {} });
  const usedAt = async () => (await query<{ used_at: string | null }>(db.url, 'SELECT used_at FROM node_join_tokens WHERE id = $1', [minted.id]))[0]!.used_at;
  return { url: db.url, node1, minted, usedAt };
}

const listDir = async (dir: string) => (await readdir(dir)).sort();
const exists = (path: string) => access(path).then(() => true, () => false);
const mode = async (path: string) => (await stat(path)).mode & 0o777;
const fingerprint = async (path: string) => {
  const r = await runCommand('ssh-keygen', ['-l', '-f', path]);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout.split(' ')[1];
};

/** A refusal: its code, and neither the token's secret nor the database password in its message. */
async function refused(t: ExecutionContext<unknown>, p: Promise<unknown>, code: string, secrets: readonly string[]) {
  const err = await t.throwsAsync(p);
  t.is((err as { code?: string }).code, code);
  for (const s of secrets) t.false(err!.message.includes(s), 'no secret in the message');
}

test('ok/join writes a complete data directory: node 1\'s keys (ssh-keygen fingerprints), init\'s modes, its own identity', async (t) => {
  await withTempDir(async (dir) => {
    const { url, node1, minted, usedAt } = await cluster(t, dir);
    const node2 = join(dir, 'node2');
    const joined = await joinCluster({ dir: node2, databaseUrl: url, token: minted.token, config: { ssh: { publicHost: 'node2.example' } } });
    t.regex(joined.nodeId, /^node_[a-z2-7]{16}$/);
    for (const f of ['ca/user_ca.pub', 'ca/host_ca.pub', 'ssh/host_key.pub', 'ca/user_ca', 'ssh/host_key']) t.is(await fingerprint(join(node2, f)), await fingerprint(join(node1, f)), f);
    for (const f of ['ca/host_ca', 'ssh/host_key-cert.pub', 'tls/api.key', 'tls/api.crt', 'tls/api.pin', 'tls/proxy-session.key']) t.deepEqual(await readFile(join(node2, f)), await readFile(join(node1, f)), f);
    for (const f of ['ca/user_ca', 'ca/host_ca', 'ssh/host_key', 'tls/api.key', 'tls/proxy-session.key', 'config.json', 'database.url']) t.is(await mode(join(node2, f)), 0o600, f);
    for (const d of ['', 'ca', 'ssh', 'tls']) t.is(await mode(join(node2, d)), 0o700, `${d || 'the data directory'} is 0700`);
    const config = JSON.parse(await readFile(join(node2, 'config.json'), 'utf8')) as { ssh: { publicHost: string; listen: string } };
    t.like(config.ssh, { publicHost: 'node2.example', listen: '127.0.0.1:0' });
    t.is((await readFile(join(node2, 'database.url'), 'utf8')).trim(), url);
    t.is(JSON.parse(await readFile(join(node2, 'node.json'), 'utf8')).id, joined.nodeId);
    t.not(await usedAt(), null);
    const [row] = await query<{ used_by_node: string; sealed: string }>(url, 'SELECT used_by_node, sealed FROM node_join_tokens WHERE id = $1', [minted.id]);
    t.is(row!.used_by_node, joined.nodeId);
    // The database holds ciphertext only: no PEM or OpenSSH key text in the row.
    t.notRegex(row!.sealed, /PRIVATE KEY|ssh-ed25519/);
  });
});

test('fail/a used token, an expired one, an unknown one and a malformed one: NODE_TOKEN_INVALID, nothing written', async (t) => {
  await withTempDir(async (dir) => {
    const { url, minted, usedAt } = await cluster(t, dir);
    const secret = minted.token.split('.')[1]!;
    const password = new URL(url).password;
    // Expired: an hour and more later.
    await refused(t, joinCluster({ dir: join(dir, 'late'), databaseUrl: url, token: minted.token, now: new Date(Date.now() + 2 * 3600_000) }), 'NODE_TOKEN_INVALID', [secret, password]);
    t.false(await exists(join(dir, 'late')));
    t.is(await usedAt(), null, 'the expired redemption changed nothing');
    await joinCluster({ dir: join(dir, 'node2'), databaseUrl: url, token: minted.token });
    await refused(t, joinCluster({ dir: join(dir, 'node3'), databaseUrl: url, token: minted.token }), 'NODE_TOKEN_INVALID', [secret, password]);
    t.false(await exists(join(dir, 'node3')));
    const unknown = minted.token.replace(/\.(.)/, (_m, c: string) => `.${c === 'A' ? 'B' : 'A'}`);
    await refused(t, joinCluster({ dir: join(dir, 'node4'), databaseUrl: url, token: unknown }), 'NODE_TOKEN_INVALID', [unknown.split('.')[1]!]);
    await refused(t, joinCluster({ dir: join(dir, 'node5'), databaseUrl: url, token: 'cjt_nope' }), 'NODE_TOKEN_INVALID', []);
    t.false(await exists(join(dir, 'node4')));
    t.false(await exists(join(dir, 'node5')));
  });
});

test('fail/a sealed blob altered in the database: NODE_TOKEN_SEAL_INVALID, nothing written, the token still unused', async (t) => {
  await withTempDir(async (dir) => {
    const { url, minted, usedAt } = await cluster(t, dir);
    const [row] = await query<{ sealed: string }>(url, 'SELECT sealed FROM node_join_tokens WHERE id = $1', [minted.id]);
    const parts = row!.sealed.split('.');
    const body = Buffer.from(parts[2]!, 'base64url');
    body[body.length >> 1]! ^= 0x01; // one bit of the ciphertext
    parts[2] = body.toString('base64url');
    await query(url, 'UPDATE node_join_tokens SET sealed = $1 WHERE id = $2', [parts.join('.'), minted.id]);
    await refused(t, joinCluster({ dir: join(dir, 'node2'), databaseUrl: url, token: minted.token }), 'NODE_TOKEN_SEAL_INVALID', [minted.token.split('.')[1]!]);
    t.false(await exists(join(dir, 'node2')));
    t.deepEqual(await listDir(dir), ['node1']);
    t.is(await usedAt(), null);
  });
});

test('fail/a database that is not a cluster: NOT_A_CLUSTER, the database left empty, nothing written', async (t) => {
  await withTempDir(async (dir) => {
    const { minted } = await cluster(t, dir);
    const other = await createTestDatabase(t.context.postgres);
    await refused(t, joinCluster({ dir: join(dir, 'node2'), databaseUrl: other.url, token: minted.token }), 'NOT_A_CLUSTER', [new URL(other.url).password]);
    t.false(await exists(join(dir, 'node2')));
    const [tables] = await query<{ n: string }>(other.url, "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'");
    t.is(Number(tables!.n), 0, 'no migration ran on the wrong database');
  });
});

test('fail/a non-empty target directory: DATA_DIR_EXISTS, the token still unused', async (t) => {
  await withTempDir(async (dir) => {
    const { url, minted, usedAt } = await cluster(t, dir);
    await mkdir(join(dir, 'busy'));
    await writeFile(join(dir, 'busy', 'something'), 'x');
    await refused(t, joinCluster({ dir: join(dir, 'busy'), databaseUrl: url, token: minted.token }), 'DATA_DIR_EXISTS', []);
    t.deepEqual(await listDir(join(dir, 'busy')), ['something']);
    t.is(await usedAt(), null);
  });
});

test('fail/node token on a data directory on SQLite: NOT_A_CLUSTER', async (t) => {
  await withTempDir(async (dir) => {
    await initDataDir({ dir: join(dir, 'solo'), config: LISTEN });
    await refused(t, mintJoinToken({ dataDir: join(dir, 'solo'), env: {} }), 'NOT_A_CLUSTER', []);
  });
});
