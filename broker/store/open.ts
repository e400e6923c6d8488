/**
 * openStore: the Store object, in steps: open the connections and bring the
 * schema up (connections.ts), put the group committer on the write
 * connection, bind every operation (operations.ts) to where it runs, serve
 * serials from the reserve (serials.ts), close.
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
import { chmod, open } from 'node:fs/promises';
import knex, { type Knex } from 'knex';
import * as certs from './certs.js';
import { connectionDb } from './connection-db.js';
import { openConnections } from './connections.js';
import { toStoreError } from './db.js';
import { GroupCommitter, type MemberScope } from './group-commit.js';
import { bindOps, isReadOperation, type WithDb } from './operations.js';
import { openPostgresStore } from './postgres.js';
import { SerialReserve } from './serials.js';
import type { SqliteConnection } from './sqlite-driver.js';
import type { OpenStoreOptions, Store, StoreTx } from './types.js';

/** How long a call may queue for the connection before failing STORE_BUSY. */
const ACQUIRE_TIMEOUT_MS = 10_000;
/** Most transactions per group commit. */
const MAX_BATCH = 64;
/** Serials reserved at a time (serials.ts); a restart skips at most this many. */
const SERIAL_BLOCK = 128;

async function mapErrors<R>(operation: string, body: () => Promise<R>): Promise<R> {
  try {
    return await body();
  } catch (err) {
    throw toStoreError(err, operation);
  }
}

/**
 * Reads outside a transaction, taking the read connections in turn. Each
 * call's Db lives for the call only: a statement issued after it is refused.
 */
function readOn(qb: Knex, readers: readonly SqliteConnection[]): WithDb {
  let next = 0;
  return async (operation, body) => {
    const connection = readers[next++ % readers.length]!;
    const scope: MemberScope = { open: true, inflight: new Set() };
    try {
      return await mapErrors(operation, () => body(connectionDb(qb, connection, scope, false)));
    } finally {
      scope.open = false;
    }
  };
}

/** A write outside a transaction: a group-commit member of its own. */
function writeOn(committer: GroupCommitter): WithDb {
  return (operation, body) => committer.submit((db) => mapErrors(operation, () => body(db)));
}

/** Store.nextSerial: from the reserve, refilled by a reservation of its own. */
async function nextSerialAlone(serials: SerialReserve, write: WithDb): Promise<bigint> {
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
}

/** Store.transaction: fn runs as a member of the next batch, on a tx bound to that member's Db. */
function runTransaction<T>(committer: GroupCommitter, serials: SerialReserve, fn: (tx: StoreTx) => Promise<T>): Promise<T> {
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
}

/**
 * The database holds the device inventory and the audit trail: owner-only,
 * whatever the umask (0022 would make it 0644, and OpenSSH mode documents
 * the data directory as 0711, searchable by everyone). The file is created
 * 0600 before SQLite opens it; SQLite gives -wal and -shm the main file's
 * mode when it creates them. Files an older broker left 0644 are narrowed.
 */
async function restrictDatabaseFiles(filename: string): Promise<void> {
  if (filename === ':memory:' || filename === '' || filename.startsWith('file:')) return;
  // Cannot create it (no such directory…): SQLite's own open says why, as before.
  const created = await open(filename, 'a', 0o600).catch(() => undefined);
  await created?.close();
  for (const path of [filename, `${filename}-wal`, `${filename}-shm`]) {
    await chmod(path, 0o600).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const readonly = options.readonly ?? false;
  if (options.databaseUrl !== undefined) {
    return openPostgresStore({
      url: options.databaseUrl,
      readonly,
      acquireTimeoutMs: options.acquireTimeoutMs,
      onConnectionError: options.onConnectionError,
    });
  }
  if (!readonly) await restrictDatabaseFiles(options.filename);
  const acquireTimeoutMs = options.acquireTimeoutMs ?? ACQUIRE_TIMEOUT_MS;
  const connections = await openConnections(options.filename, { readonly, readConnections: options.readConnections ?? 1, acquireTimeoutMs });
  // A connection-less knex: compiles queries, can never execute one.
  const qb = knex({ client: 'sqlite3', useNullAsDefault: true });
  const committer = new GroupCommitter({
    source: connections.writer,
    // BEGIN IMMEDIATE takes the write lock up front, so that a transaction
    // never fails half-way with SQLITE_BUSY_SNAPSHOT because another process
    // wrote in between (it waits busy_timeout at BEGIN instead). A
    // read-only store cannot take the write lock: plain BEGIN.
    begin: readonly ? 'BEGIN' : 'BEGIN IMMEDIATE',
    dbFor: (connection, scope) => connectionDb(qb, connection, scope, true),
    queueTimeoutMs: acquireTimeoutMs,
    maxBatch: MAX_BATCH,
  });
  const read = connections.readers.length > 0 ? readOn(qb, connections.readers) : null;
  const write = writeOn(committer);
  const serials = new SerialReserve(() => write('nextSerial', (db) => certs.reserveSerials(db, SERIAL_BLOCK)), BigInt(SERIAL_BLOCK));
  return {
    ...bindOps((operation, body) => (read && isReadOperation(operation) ? read(operation, body) : write(operation, body))),
    nextSerial: () => nextSerialAlone(serials, write),
    transaction: <T>(fn: (tx: StoreTx) => Promise<T>) => runTransaction(committer, serials, fn),
    async close(): Promise<void> {
      await committer.close();
      await Promise.all([connections.close(), qb.destroy()]);
    },
  };
}
