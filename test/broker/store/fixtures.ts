/**
 * What the store tests share: a store on a fresh file in a temporary
 * directory (torn down in finally), raw SQLite access for what the Store
 * deliberately does not expose, a fixed clock, and rows to insert.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sqlite3 from 'sqlite3';
import { openStore, type NewDevice, type NewToken, type OpenStoreOptions, type Store, type StoreTx } from '../../../broker/store/index.js';

export const T0 = new Date('2030-01-01T00:00:00Z');
export const at = (ms: number) => new Date(T0.getTime() + ms);
export const HOUR = 3_600_000;
export const POOL = { first: 20000, last: 29999, perDevice: 2 };

/** A store on a fresh file, closed and deleted when fn settles. */
export async function withStore<T>(fn: (store: Store, file: string) => Promise<T>, options: Omit<OpenStoreOptions, 'filename'> = {}): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-store-'));
  const file = join(dir, 'certunnel.db');
  const store = await openStore({ ...options, filename: file });
  try {
    return await fn(store, file);
  } finally {
    await store.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** Raw SQLite access, for what the Store deliberately does not expose. */
export async function sql<T>(file: string, query: string, params: unknown[] = []): Promise<T[]> {
  const db = await new Promise<sqlite3.Database>((res, rej) => {
    const d = new sqlite3.Database(file, (err) => (err ? rej(err) : res(d)));
  });
  try {
    return await new Promise<T[]>((res, rej) => db.all(query, params, (err, rows) => (err ? rej(err) : res(rows as T[]))));
  } finally {
    await new Promise((res) => db.close(res));
  }
}

export const countRows = (file: string, table: string) => sql<{ n: number }>(file, `SELECT COUNT(*) AS n FROM ${table}`).then((r) => r[0]!.n);

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
