/**
 * What the store tests share: a store on a fresh SQLite file in a temporary
 * directory, or a fresh database of a throwaway PostgreSQL cluster (torn
 * down in finally); raw SQL access for what the Store deliberately does not
 * expose; a fixed clock; and rows to insert.
 *
 * The store's contract runs on both backends: each contract test file
 * imports `test` from here, and test/broker/store/postgres/<file>.test.ts
 * runs the same file again after useBackend('postgres'). A test that is
 * about SQLite's own machinery registers with `test.sqlite` instead: the
 * PostgreSQL run does not register it (its title says so), rather than
 * skipping it silently.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import avaTest, { type ExecutionContext } from 'ava';
import pg from 'pg';
import sqlite3 from 'sqlite3';
import { openStore, type NewDevice, type NewToken, type OpenStoreOptions, type Store, type StoreTx } from '../../../broker/store/index.js';
import { numberPlaceholders } from '../../../broker/store/postgres.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../../testkit/postgres.js';

export type Backend = 'sqlite' | 'postgres';
let backend: Backend = 'sqlite';
let cluster: Promise<PostgresCluster> | undefined;

/** Runs this file's contract tests on BACKEND (call before importing them); PostgreSQL's cluster stops after the file. */
export function useBackend(b: Backend): void {
  backend = b;
  if (b === 'postgres') {
    avaTest.after.always(async () => {
      await (await cluster)?.stop();
    });
  }
}

export const currentBackend = (): Backend => backend;

type Body = (t: ExecutionContext) => Promise<void> | void;

/** ava's test, titled with the backend when it is not SQLite; `.sqlite` for SQLite-only tests. */
export const test = Object.assign((title: string, body: Body) => avaTest(backend === 'sqlite' ? title : `${backend}: ${title}`, body), {
  sqlite: (title: string, body: Body) => {
    if (backend === 'sqlite') avaTest(`${title} (SQLite's own machinery)`, body);
  },
});

/** The store's location: a SQLite file, or a PostgreSQL database URL (what `sql` takes). */
async function freshLocation(): Promise<{ location: string; cleanup: () => Promise<void>; options: Partial<OpenStoreOptions> }> {
  if (backend === 'postgres') {
    cluster ??= startPostgres();
    const database = await createTestDatabase(await cluster);
    // Pool waits on a loaded 2-core machine running the suite are not what is tested.
    return { location: database.url, cleanup: async () => {}, options: { databaseUrl: database.url, acquireTimeoutMs: 120_000 } };
  }
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-store-'));
  return { location: join(dir, 'certunnel.db'), cleanup: () => rm(dir, { recursive: true, force: true }), options: {} };
}

export const T0 = new Date('2030-01-01T00:00:00Z');
export const at = (ms: number) => new Date(T0.getTime() + ms);
export const HOUR = 3_600_000;
export const POOL = { first: 20000, last: 29999, perDevice: 2 };

/** A store on a fresh file (or PostgreSQL database), closed and deleted when fn settles; fn gets its location. */
export async function withStore<T>(fn: (store: Store, file: string) => Promise<T>, options: Omit<OpenStoreOptions, 'filename'> = {}): Promise<T> {
  const { location, cleanup, options: where } = await freshLocation();
  const store = await openStore({ ...where, ...options, filename: where.databaseUrl ? '' : location });
  try {
    return await fn(store, location);
  } finally {
    await store.close().catch(() => {});
    await cleanup();
  }
}

/** Opens another store on LOCATION (a file or a database URL, as withStore gives it). */
export function openAt(location: string, options: Omit<OpenStoreOptions, 'filename'> = {}): Promise<Store> {
  return location.startsWith('postgres://') ? openStore({ ...options, filename: '', databaseUrl: location }) : openStore({ ...options, filename: location });
}

/** Raw SQL on a store's location (`?` placeholders on both), for what the Store deliberately does not expose. */
export async function sql<T>(file: string, query: string, params: unknown[] = []): Promise<T[]> {
  if (file.startsWith('postgres://')) {
    const client = new pg.Client({ connectionString: file });
    await client.connect();
    try {
      return (await client.query(numberPlaceholders(query), params)).rows as T[];
    } finally {
      await client.end();
    }
  }
  const db = await new Promise<sqlite3.Database>((res, rej) => {
    const d = new sqlite3.Database(file, (err) => (err ? rej(err) : res(d)));
  });
  try {
    return await new Promise<T[]>((res, rej) => db.all(query, params, (err, rows) => (err ? rej(err) : res(rows as T[]))));
  } finally {
    await new Promise((res) => db.close(res));
  }
}

export const countRows = (file: string, table: string) => sql<{ n: number | string }>(file, `SELECT COUNT(*) AS n FROM ${table}`).then((r) => Number(r[0]!.n));

const rnd = () => randomBytes(10).toString('hex');

export const token = (over: Partial<NewToken> = {}): NewToken => ({
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

export const device = (over: Partial<NewDevice> = {}): NewDevice => ({
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

/** An audit event of action `test`, numbered i in its details. */
export const audit = (i: number) => ({ at: T0, actor: 'system', action: 'test', target: `t${i}`, remoteAddr: null, outcome: 'ok' as const, details: { i } });

/** The enrollment transaction's store part, as the broker core will run it. */
export async function enroll(tx: StoreTx, t: NewToken, pool = POOL, now = T0) {
  const d = device({ tokenId: t.id });
  if (!(await tx.redeemToken(t.tokenHash, d.id, now))) throw new Error('token refused');
  await tx.insertDevice(d);
  const block = await tx.allocatePortBlock(d.id, pool, now);
  const serial = await tx.nextSerial();
  return { deviceId: d.id, block, serial };
}
