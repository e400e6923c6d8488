/**
 * openStore: the SQLite connections, their pragmas, migrations,
 * transactions, and the Store object binding every table module to a
 * connection.
 *
 * One write connection, on purpose. SQLite allows one writer at a time;
 * with more connections, concurrent transactions would wait on the file
 * lock with busy_timeout's sleep-and-retry. Every write goes through the
 * group committer on that connection (group-commit.ts): transactions queue
 * in memory, FIFO, and those that queued while a batch ran share the next
 * BEGIN IMMEDIATE … COMMIT, each in its own savepoint. busy_timeout still
 * matters for other processes (a read-only CLI, a backup) sharing the file.
 *
 * Reads outside a transaction (findDevice, listAudit, …) run on separate
 * read connections instead: WAL lets them read the last committed state
 * while a batch writes, so they never queue behind writers, and each is a
 * single statement (its own read transaction). A read issued after a write
 * resolved sees that write: the write resolved after its COMMIT.
 *
 * The flip side: a Store *write* awaited inside `store.transaction` waits
 * for the batch that transaction belongs to, until ACQUIRE_TIMEOUT_MS, then
 * fails STORE_BUSY; a Store *read* there does not see the transaction's own
 * writes. Use the `tx` the callback receives.
 */
import { access } from 'node:fs/promises';
import knex, { type Knex } from 'knex';
import { BrokerError } from '../core/errors.js';
import * as apiKeys from './api-keys.js';
import * as audit from './audit.js';
import * as certs from './certs.js';
import { connectionDb } from './connection-db.js';
import { rawRows, toStoreError, type Db } from './db.js';
import * as devices from './devices.js';
import { MIGRATIONS, migrationSource } from './migrations/index.js';
import * as ports from './ports.js';
import { GroupCommitter, type MemberScope } from './group-commit.js';
import { SerialReserve } from './serials.js';
import { StatementCachingSqliteClient, type SqliteConnection } from './sqlite-driver.js';
import * as tokens from './tokens.js';
import type { OpenStoreOptions, Store, StoreTx } from './types.js';

const BUSY_TIMEOUT_MS = 5000;
/** How long a call may queue for the connection before failing STORE_BUSY. */
const ACQUIRE_TIMEOUT_MS = 10_000;
/** Most transactions per group commit. */
const MAX_BATCH = 64;
/** Serials reserved at a time (serials.ts); a restart skips at most this many. */
const SERIAL_BLOCK = 128;
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

/** How a bound operation gets its Db: a read connection, a group-commit member of its own, or the transaction's. */
type WithDb = <R>(operation: string, body: (db: Db) => Promise<R>) => Promise<R>;

/**
 * Operations that only read, each in one statement: outside a transaction
 * they run on a read connection. Every other operation writes.
 */
const READ_OPERATIONS: ReadonlySet<keyof StoreTx> = new Set<keyof StoreTx>([
  'findTokenByHash', 'listTokens', 'countActiveTokens',
  'findDevice', 'findDeviceByName', 'findDeviceByFingerprint', 'findActiveDeviceByPort', 'listDevices', 'countDevicesByStatus',
  'portPoolUsage',
  'findCertificate', 'latestCertificateOfDevice', 'findDeviceWithLatestCertificate', 'listRevokedUnexpiredSerials', 'listRevokedDeviceIds', 'isSerialRevoked',
  'findApiKey', 'listApiKeys',
  'listAudit',
]);

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
    findActiveDeviceByPort: op('findActiveDeviceByPort', devices.findActiveDeviceByPort),
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
    findDeviceWithLatestCertificate: op('findDeviceWithLatestCertificate', devices.findDeviceWithLatestCertificate),
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

export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const readonly = options.readonly ?? false;
  const acquireTimeoutMs = options.acquireTimeoutMs ?? ACQUIRE_TIMEOUT_MS;
  if (readonly) {
    // mode=ro never creates a file, but say so clearly rather than SQLITE_CANTOPEN.
    await access(options.filename).catch(() => {
      throw new BrokerError('CONFIG_INVALID', 'store file does not exist');
    });
  }
  // The write connection (a read-only store's transactions run there too).
  const pool = connectionPool(options.filename, { openReadonly: readonly, queryOnly: readonly, size: 1, acquireTimeoutMs });
  // An in-memory database is private to its connection: no read connections then.
  const readerCount = options.filename === ':memory:' ? 0 : (options.readConnections ?? 1);
  let readerPool: Knex | null = null;
  let readers: SqliteConnection[] = [];
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
    if (readerCount > 0) {
      // query_only (pragmas(true)) keeps them from writing; opened after the
      // migrations, so that they see the schema.
      readerPool = connectionPool(options.filename, { openReadonly: readonly, queryOnly: true, size: readerCount, acquireTimeoutMs });
      const rp = readerPool;
      // Held for the store's life: concurrent reads share a connection
      // (node-sqlite3 runs each statement whole under the connection's mutex).
      readers = await Promise.all(Array.from({ length: readerCount }, async () => (await rp.client.acquireConnection()) as SqliteConnection));
    }
  } catch (err) {
    await Promise.all([pool.destroy(), readerPool?.destroy()]);
    throw toStoreError(err, 'open');
  }

  // A connection-less knex: compiles queries, can never execute one.
  const qb = knex({ client: 'sqlite3', useNullAsDefault: true });

  const committer = new GroupCommitter({
    source: {
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
    },
    // BEGIN IMMEDIATE takes the write lock up front, so that a transaction
    // never fails half-way with SQLITE_BUSY_SNAPSHOT because another process
    // wrote in between (it waits busy_timeout at BEGIN instead). A
    // read-only store cannot take the write lock: plain BEGIN.
    begin: readonly ? 'BEGIN' : 'BEGIN IMMEDIATE',
    dbFor: (connection, scope) => connectionDb(qb, connection, scope, true),
    queueTimeoutMs: acquireTimeoutMs,
    maxBatch: MAX_BATCH,
  });

  const mapErrors = async <R>(operation: string, body: () => Promise<R>): Promise<R> => {
    try {
      return await body();
    } catch (err) {
      throw toStoreError(err, operation);
    }
  };

  let nextReader = 0;
  async function read<R>(operation: string, body: (db: Db) => Promise<R>): Promise<R> {
    const connection = readers[nextReader++ % readers.length]!;
    const scope: MemberScope = { open: true, inflight: new Set() };
    try {
      return await mapErrors(operation, () => body(connectionDb(qb, connection, scope, false)));
    } finally {
      scope.open = false;
    }
  }

  const write = <R>(operation: string, body: (db: Db) => Promise<R>): Promise<R> =>
    committer.submit((db) => mapErrors(operation, () => body(db)));
  const serials = new SerialReserve(() => write('nextSerial', (db) => certs.reserveSerials(db, SERIAL_BLOCK)), BigInt(SERIAL_BLOCK));

  return {
    ...bindOps((operation, body) =>
      readers.length > 0 && READ_OPERATIONS.has(operation as keyof StoreTx) ? read(operation, body) : write(operation, body),
    ),

    async nextSerial(): Promise<bigint> {
      let serial = serials.take();
      if (serial === null) {
        await serials.refill();
        serial = serials.take();
      }
      if (serial !== null) return serial;
      // No block (fewer than one left before 2^63, or the reservation
      // failed): advance the counter by one.
      serial = await write('nextSerial', certs.nextSerial);
      serials.handedOut(serial);
      return serial;
    },

    transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
      // fn's own errors go back unchanged; BEGIN/COMMIT failures are translated.
      return committer.submit((db) => {
        const tx = bindOps((operation, body) => mapErrors(operation, () => body(db)));
        // From the reserve when it has some (no statement), else the counter
        // advanced in this transaction (rolled back with it).
        const counted = tx.nextSerial;
        tx.nextSerial = async () => {
          const reserved = serials.take();
          if (reserved !== null) return reserved;
          const serial = await counted();
          serials.handedOut(serial);
          return serial;
        };
        return fn(tx);
      });
    },

    async close(): Promise<void> {
      await committer.close();
      const rp = readerPool;
      if (rp) await Promise.all(readers.map((c) => rp.client.releaseConnection(c)));
      await Promise.all([pool.destroy(), rp?.destroy(), qb.destroy()]);
    },
  };
}
