/**
 * openStore: the SQLite connection, its pragmas, migrations, and the Store
 * object binding every table module to a connection or a transaction.
 *
 * One connection, on purpose. SQLite allows one writer at a time; with more
 * connections, concurrent transactions would wait on the file lock with
 * busy_timeout's sleep-and-retry (and a deferred BEGIN that reads before it
 * writes can fail with SQLITE_BUSY instead of waiting). With one connection,
 * knex's pool queues transactions in memory, FIFO, without ever touching the
 * lock: no BUSY, no deadlock, and measurably higher throughput (see
 * scripts/bench/store-bench.ts). busy_timeout still matters for other
 * processes (a read-only CLI, a backup) sharing the file.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { access } from 'node:fs/promises';
import knex, { type Knex } from 'knex';
import { BrokerError } from '../errors.js';
import * as apiKeys from './api-keys.js';
import * as audit from './audit.js';
import * as certs from './certs.js';
import { toStoreError, type Db } from './db.js';
import * as devices from './devices.js';
import { MIGRATIONS, migrationSource } from './migrations/index.js';
import * as ports from './ports.js';
import { CachingSqliteClient } from './sqlite-client.js';
import * as tokens from './tokens.js';
import type { OpenStoreOptions, Store, StoreTx } from './types.js';

const BUSY_TIMEOUT_MS = 5000;
/** How long a call may queue for the connection before failing. */
const ACQUIRE_TIMEOUT_MS = 30_000;
const MIGRATIONS_TABLE = 'knex_migrations';

interface SqliteConnection {
  exec(sql: string, cb: (err: Error | null) => void): void;
}

/**
 * Per-connection settings (SQLite-specific; PostgreSQL needs none of them):
 * - journal_mode=WAL: readers never block the writer; persistent in the file;
 * - synchronous=NORMAL: in WAL mode a commit is durable against a process
 *   kill and the database stays consistent on power loss (the last commits
 *   may roll back), at a fraction of FULL's fsyncs;
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

type Op<A extends unknown[], R> = (db: Db, ...args: A) => Promise<R>;

/** Binds every operation to db; errors leave as BrokerError only. */
function bindOps(db: Db, guard: () => void): StoreTx {
  const op =
    <A extends unknown[], R>(name: string, fn: Op<A, R>) =>
    async (...args: A): Promise<R> => {
      guard();
      try {
        return await fn(db, ...args);
      } catch (err) {
        throw toStoreError(err, name);
      }
    };
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

export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const readonly = options.readonly ?? false;
  const connections = options.connections ?? 1;
  if (readonly) {
    // mode=ro never creates a file, but say so clearly rather than SQLITE_CANTOPEN.
    await access(options.filename).catch(() => {
      throw new BrokerError('CONFIG_INVALID', 'store file does not exist');
    });
  }
  const db = knex({
    client: CachingSqliteClient as unknown as typeof Knex.Client,
    connection: readonly ? { filename: readonlyUri(options.filename), flags: ['OPEN_URI'] } : { filename: options.filename },
    useNullAsDefault: true,
    acquireConnectionTimeout: ACQUIRE_TIMEOUT_MS,
    pool: {
      min: 1,
      max: connections,
      afterCreate: (conn: SqliteConnection, done: (err: Error | null, conn: SqliteConnection) => void) => {
        conn.exec(pragmas(readonly), (err) => done(err, conn));
      },
    },
  });

  try {
    if (readonly) {
      await checkSchemaCurrent(db);
    } else {
      const mode = ((await db.raw('PRAGMA journal_mode')) as { journal_mode: string }[])[0]?.journal_mode;
      if (mode !== 'wal' && options.filename !== ':memory:') {
        throw new BrokerError('CONFIG_INVALID', `store could not enable WAL (journal_mode=${String(mode)})`);
      }
      await db.migrate.latest({ migrationSource, tableName: MIGRATIONS_TABLE });
    }
  } catch (err) {
    await db.destroy();
    throw toStoreError(err, 'open');
  }

  // The transaction (if any) the current async call chain runs in. A Store
  // method called there would queue behind the connection that transaction
  // holds until ACQUIRE_TIMEOUT_MS: refuse it at once instead.
  const current = new AsyncLocalStorage<Knex.Transaction>();
  const refuseInsideTransaction = (): void => {
    const trx = current.getStore();
    if (trx && !trx.isCompleted()) {
      throw new BrokerError('INTERNAL', 'store: Store method called inside a transaction; use its tx');
    }
  };
  const noGuard = (): void => {};

  return {
    ...bindOps(db, refuseInsideTransaction),

    async transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
      refuseInsideTransaction();
      // Errors thrown by fn go back to the caller unchanged; anything else
      // (BEGIN, COMMIT, the pool) is a driver error and gets translated.
      let thrown: { err: unknown } | undefined;
      try {
        return await db.transaction((trx) =>
          current.run(trx, async () => {
            try {
              return await fn(bindOps(trx, noGuard));
            } catch (err) {
              thrown = { err };
              throw err;
            }
          }),
        );
      } catch (err) {
        if (thrown && thrown.err === err) throw err;
        throw toStoreError(err, 'transaction');
      }
    },

    async close(): Promise<void> {
      await db.destroy();
    },
  };
}
