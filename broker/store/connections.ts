/**
 * The store's SQLite connections: their pragmas, the knex pools holding
 * them, the schema step (migrate a read-write store, check a read-only
 * one), the write connection as the group committer takes it, and the read
 * connections held for the store's life. Why one write connection and
 * separate read ones: open.ts.
 */
import { access } from 'node:fs/promises';
import knex, { type Knex } from 'knex';
import { BrokerError } from '../core/errors.js';
import { rawRows, toStoreError } from './db.js';
import type { WriteConnectionSource } from './group-commit.js';
import { MIGRATIONS, migrationSource } from './migrations/index.js';
import { StatementCachingSqliteClient, type SqliteConnection } from './sqlite-driver.js';

const BUSY_TIMEOUT_MS = 5000;
const MIGRATIONS_TABLE = 'knex_migrations';

export interface ConnectionOptions {
  readonly readonly: boolean;
  /** Read connections wanted; an in-memory database gets none. */
  readonly readConnections: number;
  /** How long a caller may wait for a connection before failing STORE_BUSY. */
  readonly acquireTimeoutMs: number;
}

export interface StoreConnections {
  /** The one write connection, for the group committer (a read-only store's transactions run there too). */
  readonly writer: WriteConnectionSource;
  /** Read connections for reads outside transactions; empty: reads go to the writer. */
  readonly readers: readonly SqliteConnection[];
  close(): Promise<void>;
}

/**
 * Per-connection settings (SQLite-specific; PostgreSQL needs none of them):
 * - journal_mode=WAL: readers never block the writer; persistent in the file;
 * - synchronous=NORMAL: in WAL mode a commit survives a process kill and the
 *   database stays consistent on power loss (the last commits may roll
 *   back), at a fraction of FULL's fsyncs;
 * - foreign_keys=ON: off by default in SQLite, per connection;
 * - query_only for read-only stores, as a second lock besides mode=ro.
 */
function pragmas(readonly: boolean): string {
  const common = [`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`, 'PRAGMA foreign_keys = ON', 'PRAGMA synchronous = NORMAL'];
  return [...common, readonly ? 'PRAGMA query_only = ON' : 'PRAGMA journal_mode = WAL'].join('; ');
}

/** SQLite URI for a read-only open: `?`, `#` and `%` must be escaped in the path. */
function readonlyUri(filename: string): string {
  return `file:${filename.replace(/[%?#]/g, (c) => `%${c.charCodeAt(0).toString(16)}`)}?mode=ro`;
}

/**
 * A knex pool of `size` connections to filename. `openReadonly`: opened
 * mode=ro (a read-only store); `queryOnly`: the read-only pragmas (a
 * read-only store, or a read connection of a read-write one).
 */
function connectionPool(filename: string, o: { openReadonly: boolean; queryOnly: boolean; size: number; acquireTimeoutMs: number }): Knex {
  return knex({
    client: StatementCachingSqliteClient as unknown as typeof Knex.Client,
    connection: o.openReadonly ? { filename: readonlyUri(filename), flags: ['OPEN_URI'] } : { filename },
    useNullAsDefault: true,
    // Every failure reaches the caller as a BrokerError; knex would also
    // print some (e.g. acquire timeouts) to the console.
    log: { error: () => {}, debug: () => {} },
    acquireConnectionTimeout: o.acquireTimeoutMs,
    pool: {
      min: o.size,
      max: o.size,
      afterCreate: (conn: SqliteConnection, done: (err: Error | null, conn: SqliteConnection) => void) => {
        conn.exec(pragmas(o.queryOnly), (err) => done(err, conn));
      },
    },
  });
}

/** A read-only store runs no migrations: its schema must already be current. */
async function checkSchemaCurrent(db: Knex): Promise<void> {
  let applied: string[];
  try {
    applied = ((await db(MIGRATIONS_TABLE).select('name')) as { name: string }[]).map((r) => r.name);
  } catch (err) {
    throw new BrokerError('CONFIG_INVALID', 'store is not initialized', { cause: toStoreError(err, 'open') });
  }
  if (MIGRATIONS.some((m) => !applied.includes(m.name))) {
    throw new BrokerError('CONFIG_INVALID', 'store schema is out of date; open it read-write once to migrate');
  }
}

/** A read-write store: WAL must have taken (the read connections rely on it), then the migrations run. */
async function migrateSchema(db: Knex, filename: string): Promise<void> {
  const mode = rawRows<{ journal_mode: string }>(await db.raw('PRAGMA journal_mode'))[0]?.journal_mode;
  if (mode !== 'wal' && filename !== ':memory:') {
    throw new BrokerError('CONFIG_INVALID', `store could not enable WAL (journal_mode=${String(mode)})`);
  }
  await db.migrate.latest({ migrationSource, tableName: MIGRATIONS_TABLE });
}

/**
 * Takes every connection of the pool, held for the store's life: concurrent
 * reads share a connection (node-sqlite3 runs each statement whole under
 * the connection's mutex).
 */
function holdConnections(pool: Knex, count: number): Promise<SqliteConnection[]> {
  return Promise.all(Array.from({ length: count }, async () => (await pool.client.acquireConnection()) as SqliteConnection));
}

function isAcquireTimeout(err: unknown): boolean {
  return (err as { name?: unknown } | null)?.name === 'KnexTimeoutError';
}

/** The write pool as the group committer takes it, batch by batch; errors leave as BrokerError. */
function writeConnectionSource(pool: Knex): WriteConnectionSource {
  return {
    acquire: async () => {
      try {
        return (await pool.client.acquireConnection()) as SqliteConnection;
      } catch (err) {
        if (isAcquireTimeout(err)) {
          throw new BrokerError('STORE_BUSY', 'store: timed out waiting for the connection (saturated, or a Store method awaited inside a transaction)');
        }
        throw toStoreError(err, 'transaction');
      }
    },
    release: async (connection) => {
      await pool.client.releaseConnection(connection);
    },
  };
}

/** Opens the write pool, brings its schema up (or checks it), then opens the read connections. */
export async function openConnections(filename: string, o: ConnectionOptions): Promise<StoreConnections> {
  if (o.readonly) {
    // mode=ro never creates a file, but say so clearly rather than SQLITE_CANTOPEN.
    await access(filename).catch(() => {
      throw new BrokerError('CONFIG_INVALID', 'store file does not exist');
    });
  }
  const pool = connectionPool(filename, { openReadonly: o.readonly, queryOnly: o.readonly, size: 1, acquireTimeoutMs: o.acquireTimeoutMs });
  // An in-memory database is private to its connection: no read connections then.
  const readerCount = filename === ':memory:' ? 0 : o.readConnections;
  let readerPool: Knex | null = null;
  let readers: SqliteConnection[] = [];
  try {
    if (o.readonly) await checkSchemaCurrent(pool);
    else await migrateSchema(pool, filename);
    if (readerCount > 0) {
      // query_only (pragmas(true)) keeps them from writing; opened after the
      // migrations, so that they see the schema.
      readerPool = connectionPool(filename, { openReadonly: o.readonly, queryOnly: true, size: readerCount, acquireTimeoutMs: o.acquireTimeoutMs });
      readers = await holdConnections(readerPool, readerCount);
    }
  } catch (err) {
    await Promise.all([pool.destroy(), readerPool?.destroy()]);
    throw toStoreError(err, 'open');
  }
  const heldBy = readerPool;
  return {
    writer: writeConnectionSource(pool),
    readers,
    async close() {
      if (heldBy) await Promise.all(readers.map((c) => heldBy.client.releaseConnection(c)));
      await Promise.all([pool.destroy(), heldBy?.destroy()]);
    },
  };
}
