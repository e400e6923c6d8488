/**
 * The store on PostgreSQL, for several broker nodes sharing one database
 * (DESIGN.md "Storage and scale: several brokers"). The table modules are
 * the same as on SQLite; only where their statements run differs:
 *
 * - A pool of connections (`pg`), not one write connection: PostgreSQL has
 *   row locks and MVCC, so writers run side by side instead of queueing in
 *   a group commit. knex only compiles (a connection-less `pg` knex turns
 *   builders into `$n` SQL); SQL text written with `?` is numbered here.
 * - READ COMMITTED (PostgreSQL's default), with what keeps the rules that
 *   SQLite's single writer gave for free true across nodes:
 *   - compare-and-swap statements (token redemption, key revocation,
 *     `INSERT … ON CONFLICT … RETURNING` for nonces and serial blocks) are
 *     atomic by themselves: a second writer waits for the first row lock
 *     and re-checks its WHERE on the committed row;
 *   - Db.lock: allocations of port blocks take a transaction-scoped
 *     advisory lock, so the next allocation's statement sees the committed
 *     block before it picks a candidate (no retry storm at 300 parallel
 *     enrollments);
 *   - Db.lockRows: a device row read inside a transaction is read
 *     `FOR UPDATE`, so a renewal and a revocation of the same device are
 *     serialized (the renewal sees `revoked`, or the revocation sees the
 *     renewal's certificate and revokes it too);
 *   - a transaction aborted by a deadlock or a serialization failure runs
 *     again (its fn is re-run from the start), a few times.
 * - Errors: a database that cannot be reached is STORE_UNAVAILABLE; a pool
 *   exhausted for longer than the acquire timeout is STORE_BUSY. The URL
 *   (it holds a password) is never in a message.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import knex, { type Knex } from 'knex';
import pg from 'pg';
import { BrokerError } from '../core/errors.js';
import * as certs from './certs.js';
import { toStoreError, type Binding, type Compilable, type Db } from './db.js';
import { MIGRATIONS, migrationSource } from './migrations/index.js';
import { bindOps } from './operations.js';
import { SerialReserve } from './serials.js';
import type { Store, StoreTx } from './types.js';

const MIGRATIONS_TABLE = 'knex_migrations';
/** Connections per node: enough for c=32 clients, far below max_connections (100) for three nodes. */
const DEFAULT_POOL_SIZE = 16;
/**
 * How long a call may wait for a pooled connection before STORE_BUSY.
 * Longer than SQLite's 10 s: a pooled connection is also held while a
 * transaction waits for a row or advisory lock another node holds.
 */
const ACQUIRE_TIMEOUT_MS = 30_000;
/** A statement that runs this long is cancelled: nothing the store does takes more than milliseconds. */
const STATEMENT_TIMEOUT_MS = 30_000;
/** Attempts of a transaction that a deadlock or serialization failure aborted. */
const TRANSACTION_ATTEMPTS = 5;
const SERIAL_BLOCK = 128;

/** SQLSTATEs after which the transaction may simply run again. */
const RETRYABLE = new Set(['40001', '40P01']);
/** Connection-level failures: the database is down, restarting, or unreachable. */
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE', '57P01', '57P02', '57P03', '08000', '08001', '08003', '08006']);

export interface OpenPostgresOptions {
  /** postgres://user:password@host:port/database */
  url: string;
  /** No migrations, and every transaction read-only (a CLI inspecting a cluster's store). */
  readonly?: boolean;
  poolSize?: number;
  acquireTimeoutMs?: number;
  /** Called with errors of idle pooled connections (the database restarted…); never with the URL. */
  onConnectionError?: (err: Error) => void;
}

/**
 * Numbers the `?` placeholders of SQL text as `$1, $2, …`, leaving quoted
 * strings and identifiers alone (`ESCAPE '\'`, a `?` in a literal).
 */
export function numberPlaceholders(sql: string): string {
  let out = '';
  let n = 0;
  let quote: string | null = null;
  for (const ch of sql) {
    if (quote) {
      if (ch === quote) quote = null;
      out += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      out += ch;
    } else if (ch === '?') {
      out += `$${++n}`;
    } else {
      out += ch;
    }
  }
  return out;
}

function compile(query: Compilable | string, bindings: readonly Binding[] = []): { sql: string; bindings: unknown[] } {
  if (typeof query === 'string') return { sql: numberPlaceholders(query), bindings: [...bindings] };
  const native = query.toSQL().toNative();
  return { sql: native.sql, bindings: [...native.bindings] };
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isUnavailable(err: unknown): boolean {
  const code = errorCode(err);
  if (code !== undefined && UNAVAILABLE_CODES.has(code)) return true;
  const message = (err as { message?: unknown } | null)?.message;
  // pg's own wording for a connection that ended under a query.
  return typeof message === 'string' && /Connection terminated|connection (is )?closed|Client has encountered a connection error/i.test(message);
}

/** A driver error as the store's callers see it: STORE_UNAVAILABLE, STORE_BUSY or INTERNAL (store/db.ts). */
export function toPgStoreError(err: unknown, operation: string): BrokerError {
  if (err instanceof BrokerError) return err;
  if (isUnavailable(err)) {
    return new BrokerError('STORE_UNAVAILABLE', `store: ${operation}: the database cannot be reached`, { cause: new Error(errorCode(err) ?? 'connection') });
  }
  if (errorCode(err) === '57014') return new BrokerError('STORE_BUSY', `store: ${operation} timed out`);
  return toStoreError(err, operation);
}

interface Runner {
  query(sql: string, values: unknown[]): Promise<pg.QueryResult>;
}

/** What a transaction's statements learned (whether it may run again), and whether it still runs. */
interface TxState {
  retryable: boolean;
  /** False once the transaction ended: a tx kept past it must not run on a connection someone else now holds. */
  open: boolean;
}

function pgDb(qb: Knex, runner: Runner, tx: TxState | null, begin: <T>(fn: (db: Db) => Promise<T>) => Promise<T>): Db {
  const exec = async (query: Compilable | string, bindings: readonly Binding[] | undefined): Promise<pg.QueryResult> => {
    if (tx && !tx.open) throw new BrokerError('INTERNAL', 'store: statement issued after its transaction ended');
    const c = compile(query, bindings);
    try {
      return await runner.query(c.sql, c.bindings);
    } catch (err) {
      if (tx && RETRYABLE.has(errorCode(err) ?? '')) tx.retryable = true;
      throw err;
    }
  };
  const db: Db = {
    qb,
    all: async <T>(query: Compilable | string, bindings?: readonly Binding[]) => (await exec(query, bindings)).rows as T[],
    first: async <T>(query: Compilable | string, bindings?: readonly Binding[]) => (await exec(query, bindings)).rows[0] as T | undefined,
    run: async (query, bindings) => (await exec(query, bindings)).rowCount ?? 0,
    atomically: (fn) => (tx ? fn(db) : begin(fn)),
    lock: tx
      ? async (name) => {
          await exec('SELECT pg_advisory_xact_lock(hashtext(?)) AS locked', [`certunnel:${name}`]);
        }
      : undefined,
    lockRows: tx !== null,
  };
  return db;
}

async function migrate(url: string, readonly: boolean): Promise<void> {
  const db = knex({ client: 'pg', connection: url, pool: { min: 0, max: 1 }, log: { warn: () => {}, error: () => {}, debug: () => {}, deprecate: () => {} } });
  try {
    if (!readonly) {
      await db.migrate.latest({ migrationSource, tableName: MIGRATIONS_TABLE });
      return;
    }
    let applied: string[];
    try {
      applied = ((await db(MIGRATIONS_TABLE).select('name')) as { name: string }[]).map((r) => r.name);
    } catch (err) {
      if (isUnavailable(err)) throw err;
      throw new BrokerError('CONFIG_INVALID', 'store is not initialized', { cause: toPgStoreError(err, 'open') });
    }
    if (MIGRATIONS.some((m) => !applied.includes(m.name))) {
      throw new BrokerError('CONFIG_INVALID', 'store schema is out of date; open it read-write once to migrate');
    }
  } finally {
    await db.destroy();
  }
}

/** Pool options from the URL plus the store's settings; int8 stays a string (uint64 serials). */
function poolConfig(o: OpenPostgresOptions): pg.PoolConfig {
  return {
    connectionString: o.url,
    max: o.poolSize ?? DEFAULT_POOL_SIZE,
    connectionTimeoutMillis: o.acquireTimeoutMs ?? ACQUIRE_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    idle_in_transaction_session_timeout: STATEMENT_TIMEOUT_MS,
    keepAlive: true,
    application_name: 'certunnel',
    options: o.readonly ? '-c default_transaction_read_only=on' : undefined,
  };
}

async function connect(pool: pg.Pool, operation: string): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    if (/timeout exceeded when trying to connect/i.test(String((err as Error).message)) && !isUnavailable(err)) {
      throw new BrokerError('STORE_BUSY', `store: ${operation} timed out waiting for a database connection`);
    }
    throw toPgStoreError(err, operation);
  }
}

/**
 * Runs fn in BEGIN … COMMIT on one pooled connection. Deadlocks and
 * serialization failures run it again from the start (after a short random
 * pause); anything else rolls back and is thrown. fn's own errors go back
 * unchanged.
 */
async function inTransaction<T>(pool: pg.Pool, qb: Knex, fn: (db: Db) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await connect(pool, 'transaction');
    const state: TxState = { retryable: false, open: true };
    let broken: unknown;
    let inFn = false;
    try {
      await client.query('BEGIN');
      const db = pgDb(qb, client, state, () => Promise.reject(new BrokerError('INTERNAL', 'store: nested transaction')));
      inFn = true;
      const result = await fn(db);
      inFn = false;
      state.open = false;
      await client.query('COMMIT');
      return result;
    } catch (err) {
      state.open = false;
      await client.query('ROLLBACK').catch((rollbackErr: unknown) => {
        broken = rollbackErr;
      });
      if (state.retryable && attempt < TRANSACTION_ATTEMPTS) {
        await sleep(5 + Math.random() * 20 * attempt);
        continue;
      }
      // fn's own errors go back unchanged; BEGIN/COMMIT failures are translated.
      if (inFn) throw err;
      throw toPgStoreError(err, 'transaction');
    } finally {
      // A connection whose ROLLBACK failed is in an unknown state: not back to the pool.
      client.release(broken instanceof Error ? broken : undefined);
    }
  }
}

export async function openPostgresStore(o: OpenPostgresOptions): Promise<Store> {
  try {
    await migrate(o.url, o.readonly ?? false);
  } catch (err) {
    throw toPgStoreError(err, 'open');
  }
  const pool = new pg.Pool(poolConfig(o));
  // An idle pooled connection that errors (the server restarted) must not
  // crash the process: pg emits 'error' on the pool, fatal when unheard.
  pool.on('error', (err) => o.onConnectionError?.(err));
  const qb = knex({ client: 'pg' });
  const begin = <T>(fn: (db: Db) => Promise<T>) => inTransaction(pool, qb, fn);
  const lone = pgDb(qb, pool, null, begin);
  const mapped =
    <R>(operation: string, body: (db: Db) => Promise<R>): Promise<R> =>
      body(lone).catch((err: unknown) => {
        throw toPgStoreError(err, operation);
      });
  const serials = new SerialReserve(() => mapped('nextSerial', (db) => certs.reserveSerials(db, SERIAL_BLOCK)), BigInt(SERIAL_BLOCK));
  const nextSerial = async (): Promise<bigint> => {
    let serial = serials.take();
    if (serial === null) {
      await serials.refill();
      serial = serials.take();
    }
    if (serial !== null) return serial;
    serial = await mapped('nextSerial', certs.nextSerial);
    serials.handedOut(serial);
    return serial;
  };
  return {
    ...bindOps(mapped),
    nextSerial,
    transaction: <T>(fn: (tx: StoreTx) => Promise<T>) =>
      begin(async (db) => {
        const tx = bindOps((operation, body) =>
          body(db).catch((err: unknown) => {
            throw toPgStoreError(err, operation);
          }),
        );
        tx.nextSerial = async () => {
          const reserved = serials.take();
          if (reserved !== null) return reserved;
          const serial = await certs.nextSerial(db);
          serials.handedOut(serial);
          return serial;
        };
        return fn(tx);
      }),
    async close(): Promise<void> {
      await Promise.all([pool.end(), qb.destroy()]);
    },
  };
}
