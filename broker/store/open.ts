/**
 * openStore: the SQLite connection, its pragmas, migrations, transactions,
 * and the Store object binding every table module to a connection.
 *
 * One connection, on purpose. SQLite allows one writer at a time; with more
 * connections, concurrent transactions would wait on the file lock with
 * busy_timeout's sleep-and-retry. With one connection, knex's pool queues
 * transactions in memory, FIFO, without ever touching the lock: no BUSY, no
 * deadlock, and the best throughput measured (scripts/bench/store-bench.ts).
 * busy_timeout still matters for other processes (a read-only CLI, a
 * backup) sharing the file.
 *
 * The flip side: a Store method awaited inside `store.transaction` waits for
 * the connection that transaction holds, until ACQUIRE_TIMEOUT_MS, then fails
 * STORE_BUSY. Use the `tx` the callback receives.
 */
import { access } from 'node:fs/promises';
import knex, { type Knex } from 'knex';
import { BrokerError } from '../errors.js';
import * as apiKeys from './api-keys.js';
import * as audit from './audit.js';
import * as certs from './certs.js';
import { rawRows, toStoreError, type Binding, type Compilable, type Db } from './db.js';
import * as devices from './devices.js';
import { MIGRATIONS, migrationSource } from './migrations/index.js';
import * as ports from './ports.js';
import { queryAll, queryRun, StatementCachingSqliteClient, type SqliteConnection } from './sqlite-driver.js';
import * as tokens from './tokens.js';
import type { OpenStoreOptions, Store, StoreTx } from './types.js';

const BUSY_TIMEOUT_MS = 5000;
/** How long a call may queue for the connection before failing STORE_BUSY. */
const ACQUIRE_TIMEOUT_MS = 10_000;
const MIGRATIONS_TABLE = 'knex_migrations';

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

function compile(query: Compilable | string, bindings: readonly Binding[] = []): { sql: string; bindings: readonly unknown[] } {
  // SQL text is written with `?` placeholders, SQLite's own; a PostgreSQL
  // executor would take it through knex.raw(...).toSQL().toNative().
  return typeof query === 'string' ? { sql: query, bindings } : query.toSQL().toNative();
}

interface Session {
  qb: Knex;
  /**
   * BEGIN IMMEDIATE takes the write lock up front, so that a transaction
   * never fails half-way with SQLITE_BUSY_SNAPSHOT because another process
   * wrote in between (it waits busy_timeout at BEGIN instead). Within this
   * process transactions are serialized by the pool anyway. A read-only
   * store cannot take the write lock: plain BEGIN.
   */
  begin: string;
}

/** Runs fn in a transaction on connection; rolls back (and rethrows) if fn throws. */
async function inTransaction<T>(session: Session, connection: SqliteConnection, fn: (db: Db) => Promise<T>): Promise<T> {
  try {
    await queryRun(connection, session.begin, []);
  } catch (err) {
    throw toStoreError(err, 'begin');
  }
  const lease = { open: true };
  let result: T;
  try {
    result = await fn(connectionDb(session, connection, lease, true));
  } catch (err) {
    lease.open = false;
    await rollback(connection);
    throw err;
  }
  lease.open = false;
  try {
    await queryRun(connection, 'COMMIT', []);
  } catch (err) {
    await rollback(connection);
    throw toStoreError(err, 'commit');
  }
  return result;
}

async function rollback(connection: SqliteConnection): Promise<void> {
  try {
    await queryRun(connection, 'ROLLBACK', []);
  } catch (err) {
    // SQLite may already have rolled back (e.g. SQLITE_FULL); if not, the
    // connection is in an unknown state: have the pool replace it.
    if (!/no transaction is active/.test(String((err as Error).message))) connection.__knex__disposed = err;
  }
}

/**
 * A Db on a connection for as long as `lease.open`: a statement issued
 * later (a tx kept past its transaction) would otherwise run on whatever
 * the connection does next, e.g. someone else's transaction.
 */
function connectionDb(session: Session, connection: SqliteConnection, lease: { open: boolean }, transactional: boolean): Db {
  const compileOnLease = (query: Compilable | string, bindings?: readonly Binding[]) => {
    if (!lease.open) throw new BrokerError('INTERNAL', 'store: statement issued after its transaction or call ended');
    return compile(query, bindings);
  };
  const db: Db = {
    qb: session.qb,
    all: async (query, bindings) => {
      const c = compileOnLease(query, bindings);
      return queryAll(connection, c.sql, c.bindings);
    },
    first: async (query, bindings) => {
      const c = compileOnLease(query, bindings);
      return (await queryAll<never>(connection, c.sql, c.bindings))[0];
    },
    run: async (query, bindings) => {
      const c = compileOnLease(query, bindings);
      return queryRun(connection, c.sql, c.bindings);
    },
    atomically: (fn) => (transactional ? fn(db) : inTransaction(session, connection, fn)),
  };
  return db;
}

/** How a bound operation gets its Db: a fresh connection per call, or the transaction's. */
type WithDb = <R>(operation: string, body: (db: Db) => Promise<R>) => Promise<R>;

/** Binds every operation; errors leave as BrokerError only. */
function bindOps(withDb: WithDb): StoreTx {
  const op =
    <A extends unknown[], R>(name: string, fn: (db: Db, ...args: A) => Promise<R>) =>
    (...args: A): Promise<R> =>
      withDb(name, (db) => fn(db, ...args));
  return {
    insertTokens: op('insertTokens', tokens.insertTokens),
    redeemToken: op('redeemToken', tokens.redeemToken),
    findTokenByHash: op('findTokenByHash', tokens.findTokenByHash),
    listTokens: op('listTokens', tokens.listTokens),
    revokeTokens: op('revokeTokens', tokens.revokeTokens),
    countActiveTokens: op('countActiveTokens', tokens.countActiveTokens),

    insertDevice: op('insertDevice', devices.insertDevice),
    findDevice: op('findDevice', devices.findDevice),
    findDeviceByName: op('findDeviceByName', devices.findDeviceByName),
    findDeviceByFingerprint: op('findDeviceByFingerprint', devices.findDeviceByFingerprint),
    listDevices: op('listDevices', devices.listDevices),
    markDeviceRevoked: op('markDeviceRevoked', devices.markDeviceRevoked),
    updateDeviceKey: op('updateDeviceKey', devices.updateDeviceKey),
    setDeviceOnline: op('setDeviceOnline', devices.setDeviceOnline),
    countDevicesByStatus: op('countDevicesByStatus', devices.countDevicesByStatus),

    allocatePortBlock: op('allocatePortBlock', ports.allocatePortBlock),
    releasePortBlock: op('releasePortBlock', ports.releasePortBlock),
    portPoolUsage: op('portPoolUsage', ports.portPoolUsage),

    nextSerial: op('nextSerial', certs.nextSerial),
    insertCertificate: op('insertCertificate', certs.insertCertificate),
    findCertificate: op('findCertificate', certs.findCertificate),
    latestCertificateOfDevice: op('latestCertificateOfDevice', certs.latestCertificateOfDevice),
    revokeCertificatesOfDevice: op('revokeCertificatesOfDevice', certs.revokeCertificatesOfDevice),
    listRevokedUnexpiredSerials: op('listRevokedUnexpiredSerials', certs.listRevokedUnexpiredSerials),
    listRevokedDeviceIds: op('listRevokedDeviceIds', certs.listRevokedDeviceIds),
    isSerialRevoked: op('isSerialRevoked', certs.isSerialRevoked),
    pruneCertificates: op('pruneCertificates', certs.pruneCertificates),
    nextKrlVersion: op('nextKrlVersion', certs.nextKrlVersion),

    insertApiKey: op('insertApiKey', apiKeys.insertApiKey),
    findApiKey: op('findApiKey', apiKeys.findApiKey),
    touchApiKey: op('touchApiKey', apiKeys.touchApiKey),
    listApiKeys: op('listApiKeys', apiKeys.listApiKeys),
    revokeApiKey: op('revokeApiKey', apiKeys.revokeApiKey),

    insertNonce: op('insertNonce', audit.insertNonce),
    pruneNonces: op('pruneNonces', audit.pruneNonces),
    appendAudit: op('appendAudit', audit.appendAudit),
    listAudit: op('listAudit', audit.listAudit),
  };
}

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

function isAcquireTimeout(err: unknown): boolean {
  return (err as { name?: unknown } | null)?.name === 'KnexTimeoutError';
}

export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const readonly = options.readonly ?? false;
  if (readonly) {
    // mode=ro never creates a file, but say so clearly rather than SQLITE_CANTOPEN.
    await access(options.filename).catch(() => {
      throw new BrokerError('CONFIG_INVALID', 'store file does not exist');
    });
  }
  const pool = knex({
    client: StatementCachingSqliteClient as unknown as typeof Knex.Client,
    connection: readonly ? { filename: readonlyUri(options.filename), flags: ['OPEN_URI'] } : { filename: options.filename },
    useNullAsDefault: true,
    // Every failure reaches the caller as a BrokerError; knex would also
    // print some (e.g. acquire timeouts) to the console.
    log: { error: () => {}, debug: () => {} },
    acquireConnectionTimeout: options.acquireTimeoutMs ?? ACQUIRE_TIMEOUT_MS,
    pool: {
      min: 1,
      max: options.connections ?? 1,
      afterCreate: (conn: SqliteConnection, done: (err: Error | null, conn: SqliteConnection) => void) => {
        conn.exec(pragmas(readonly), (err) => done(err, conn));
      },
    },
  });

  try {
    if (readonly) {
      await checkSchemaCurrent(pool);
    } else {
      const mode = rawRows<{ journal_mode: string }>(await pool.raw('PRAGMA journal_mode'))[0]?.journal_mode;
      if (mode !== 'wal' && options.filename !== ':memory:') {
        throw new BrokerError('CONFIG_INVALID', `store could not enable WAL (journal_mode=${String(mode)})`);
      }
      await pool.migrate.latest({ migrationSource, tableName: MIGRATIONS_TABLE });
    }
  } catch (err) {
    await pool.destroy();
    throw toStoreError(err, 'open');
  }

  // A connection-less knex: compiles queries, can never execute one.
  const session: Session = { qb: knex({ client: 'sqlite3', useNullAsDefault: true }), begin: readonly ? 'BEGIN' : 'BEGIN IMMEDIATE' };

  async function withConnection<R>(operation: string, body: (connection: SqliteConnection) => Promise<R>): Promise<R> {
    let connection: SqliteConnection;
    try {
      connection = (await pool.client.acquireConnection()) as SqliteConnection;
    } catch (err) {
      if (isAcquireTimeout(err)) {
        throw new BrokerError('STORE_BUSY', 'store: timed out waiting for the connection (saturated, or a Store method awaited inside a transaction)');
      }
      throw toStoreError(err, operation);
    }
    try {
      return await body(connection);
    } finally {
      await pool.client.releaseConnection(connection);
    }
  }

  const mapErrors = async <R>(operation: string, body: () => Promise<R>): Promise<R> => {
    try {
      return await body();
    } catch (err) {
      throw toStoreError(err, operation);
    }
  };

  return {
    ...bindOps((operation, body) =>
      withConnection(operation, async (connection) => {
        const lease = { open: true };
        try {
          return await mapErrors(operation, () => body(connectionDb(session, connection, lease, false)));
        } finally {
          lease.open = false;
        }
      }),
    ),

    transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
      // fn's own errors go back unchanged; BEGIN/COMMIT failures are translated.
      return withConnection('transaction', (connection) =>
        inTransaction(session, connection, (db) => fn(bindOps((operation, body) => mapErrors(operation, () => body(db))))),
      );
    },

    async close(): Promise<void> {
      await Promise.all([pool.destroy(), session.qb.destroy()]);
    },
  };
}
