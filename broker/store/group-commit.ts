/**
 * Group commit on the store's one write connection.
 *
 * Every write (a `Store.transaction(fn)`, or a lone write such as
 * `store.appendAudit`) is a member of a batch: the members that queued while
 * the previous batch ran share one BEGIN IMMEDIATE … COMMIT. They run one
 * after the other, in submission order, each inside its own SAVEPOINT: a
 * member whose fn throws is rolled back to its savepoint (its writes only)
 * and gets its own error back; the others commit. Nothing settles before the
 * batch does: a member's promise resolves only once the COMMIT that made its
 * writes durable succeeded, and if that COMMIT (or anything else that leaves
 * the batch's transaction in doubt) fails, every member that had not already
 * failed on its own fails with the store's error.
 *
 * Why: on node-sqlite3 every statement is a libuv threadpool round trip that
 * waits for the (busy) event loop on its way back, and the write connection
 * is the broker's bottleneck. A batch pays BEGIN and COMMIT (the WAL append,
 * and the auto-checkpoint every ~1000 pages) once; a member pays one
 * SAVEPOINT instead. The first member of a transaction needs no savepoint:
 * if it throws, the whole (otherwise empty) transaction is rolled back. A
 * batch of one is exactly BEGIN IMMEDIATE, fn, COMMIT. Rows a member
 * defers (Db.defer: audit events) are inserted for the whole batch in one
 * statement before the COMMIT; those of a member that threw are dropped.
 *
 * Savepoints are never released before the COMMIT: they nest, and
 * `ROLLBACK TO member` always targets the innermost one, the current
 * member's; COMMIT releases them all. A member's fn starts as soon as its
 * BEGIN or SAVEPOINT is sent, and its statements wait for that to land
 * (MemberScope.ready): whatever fn does first in JS (e.g. signing a
 * certificate) overlaps the round trip instead of following it.
 */
import { BrokerError } from '../core/errors.js';
import { insertDeferred, toStoreError, type Db, type DeferredRow } from './db.js';
import { queryRun, type SqliteConnection } from './sqlite-driver.js';

/** Where the committer gets the write connection from, batch by batch (knex's pool). */
export interface WriteConnectionSource {
  /** Throws a BrokerError (STORE_BUSY, INTERNAL). */
  acquire(): Promise<SqliteConnection>;
  release(connection: SqliteConnection): Promise<void>;
}

/**
 * What a member's statements run under. `open` is false once the member's fn
 * settled: a statement issued later is refused. `inflight` lets the batch
 * wait for statements a settled fn left running (a Promise.all that rejected
 * early) before it rolls back or moves on: otherwise they could run inside
 * the next member's savepoint. `poisoned` records a statement error after
 * which SQLite may have rolled back the whole transaction on its own.
 */
export interface MemberScope {
  open: boolean;
  readonly inflight: Set<Promise<unknown>>;
  poisoned?: unknown;
  /** Until it settles, statements wait (the member's BEGIN or SAVEPOINT); they fail with its error. */
  ready?: Promise<void>;
  /** Rows deferred to the batch's COMMIT (Db.defer); a member's only. */
  readonly deferral?: Deferral;
}

/** Deferred rows (Db.defer) as a member sees them. */
export interface Deferral {
  /** Queued by this member, not yet inserted. */
  readonly own: DeferredRow[];
  /** The batch's: queued by members that succeeded, not yet inserted. */
  readonly batch: DeferredRow[];
  /** Earlier members' rows this member inserted (flushDeferred): queued again if it rolls back. */
  readonly flushedForOthers: DeferredRow[];
}

export interface GroupCommitOptions {
  readonly source: WriteConnectionSource;
  /** `BEGIN IMMEDIATE` (read-write) or `BEGIN` (read-only store). */
  readonly begin: string;
  /** A Db for one member: its statements run on connection under scope. */
  readonly dbFor: (connection: SqliteConnection, scope: MemberScope) => Db;
  /** How long a member may wait in the queue before failing STORE_BUSY. */
  readonly queueTimeoutMs: number;
  /** Most members per batch. */
  readonly maxBatch: number;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

interface Member {
  readonly run: (db: Db) => Promise<unknown>;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
  timer?: NodeJS.Timeout;
  outcome?: Outcome;
}

/**
 * SQLite result codes after which "the transaction may or may not be rolled
 * back automatically" (sqlite.org/lang_transaction.html): the batch cannot
 * know what it still holds, so it fails as a whole.
 */
const POISON_CODES: ReadonlySet<string> = new Set(['SQLITE_FULL', 'SQLITE_IOERR', 'SQLITE_BUSY', 'SQLITE_NOMEM', 'SQLITE_CORRUPT', 'SQLITE_INTERRUPT']);

export function isPoisoning(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && POISON_CODES.has(code);
}

/** A failure of the batch's own statements (BEGIN, SAVEPOINT, ROLLBACK TO, COMMIT). */
class BatchFailure extends Error {
  constructor(readonly error: BrokerError) {
    super(error.message);
  }
}

export class GroupCommitter {
  private readonly queue: Member[] = [];
  private draining = false;
  private closed = false;
  private idle: Array<() => void> = [];

  constructor(private readonly options: GroupCommitOptions) {}

  /** Runs fn as a member of the next batch; see the file comment for the contract. */
  submit<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new BrokerError('INTERNAL', 'store: closed'));
    return new Promise<T>((resolve, reject) => {
      const member: Member = { run: fn, resolve: resolve as (value: unknown) => void, reject };
      member.timer = setTimeout(() => {
        const i = this.queue.indexOf(member);
        if (i < 0) return;
        this.queue.splice(i, 1);
        reject(
          new BrokerError('STORE_BUSY', 'store: timed out waiting for the connection (saturated, or a Store method awaited inside a transaction)'),
        );
      }, this.options.queueTimeoutMs);
      this.queue.push(member);
      if (!this.draining) void this.drain();
    });
  }

  /** Refuses new members and resolves once the queued ones have settled. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.draining) await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  private take(): Member[] {
    const batch = this.queue.splice(0, this.options.maxBatch);
    for (const m of batch) clearTimeout(m.timer);
    return batch;
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        let connection: SqliteConnection;
        try {
          connection = await this.options.source.acquire();
        } catch (err) {
          for (const m of this.take()) m.reject(err);
          continue;
        }
        // Taken after the acquire: members queued meanwhile join this batch.
        const batch = this.take();
        await this.runBatch(connection, batch);
        await this.options.source.release(connection).catch(() => undefined);
        for (const m of batch) {
          const outcome = m.outcome!;
          if (outcome.ok) m.resolve(outcome.value);
          else m.reject(outcome.error);
        }
      }
    } finally {
      this.draining = false;
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }

  /** Sets every member's outcome; never throws. */
  private async runBatch(connection: SqliteConnection, batch: readonly Member[]): Promise<void> {
    const exec = async (sql: string, operation: string): Promise<void> => {
      try {
        await queryRun(connection, sql, []);
      } catch (err) {
        throw new BatchFailure(toStoreError(err, operation));
      }
    };
    /** Members whose writes the open transaction holds, waiting for COMMIT. */
    const holding: Member[] = [];
    /** Their deferred rows (Db.defer), inserted just before COMMIT. */
    const deferred: DeferredRow[] = [];
    let inTransaction = false;
    let i = 0;
    try {
      for (; i < batch.length; i++) {
        const member = batch[i]!;
        const ready = inTransaction ? exec('SAVEPOINT member', 'savepoint') : exec(this.options.begin, 'begin');
        ready.catch(() => undefined); // awaited below, after the member
        const { outcome, poisoned, deferral } = await this.runMember(connection, member, ready, deferred);
        member.outcome = outcome;
        await ready;
        inTransaction = true;
        if (poisoned !== undefined) throw new BatchFailure(toStoreError(poisoned, 'transaction'));
        if (outcome.ok) {
          holding.push(member);
          deferred.push(...deferral.own);
          continue;
        }
        deferred.unshift(...deferral.flushedForOthers); // rolled back below: insert them again
        if (holding.length === 0) {
          await exec('ROLLBACK', 'rollback');
          inTransaction = false;
        } else {
          await exec('ROLLBACK TO member', 'rollback');
        }
      }
      if (inTransaction) {
        if (deferred.length > 0) {
          await insertDeferred((sql, bindings) => queryRun(connection, sql, bindings), deferred).catch((err: unknown) => {
            throw new BatchFailure(toStoreError(err, 'commit'));
          });
        }
        await exec('COMMIT', 'commit');
      }
    } catch (err) {
      // The transaction is in doubt: roll it back; whatever it held is lost.
      const failure = err instanceof BatchFailure ? err.error : toStoreError(err, 'transaction');
      if (inTransaction) await rollback(connection);
      for (const m of holding) m.outcome = { ok: false, error: failure };
      const current = batch[i];
      if (current && current.outcome?.ok !== false) current.outcome = { ok: false, error: failure };
      for (const m of batch.slice(i + 1)) m.outcome = { ok: false, error: failure };
    }
  }

  private async runMember(
    connection: SqliteConnection,
    member: Member,
    ready: Promise<void>,
    deferred: DeferredRow[],
  ): Promise<{ outcome: Outcome; poisoned: unknown; deferral: Deferral }> {
    // The member's statements fail with the store's error, not the wrapper.
    const landed = ready.then(
      () => {
        scope.ready = undefined;
      },
      (err: unknown) => {
        throw err instanceof BatchFailure ? err.error : err;
      },
    );
    landed.catch(() => undefined); // a member may issue no statement at all
    const deferral: Deferral = { own: [], batch: deferred, flushedForOthers: [] };
    const scope: MemberScope = { open: true, inflight: new Set(), ready: landed, deferral };
    let outcome: Outcome;
    try {
      outcome = { ok: true, value: await member.run(this.options.dbFor(connection, scope)) };
    } catch (error) {
      outcome = { ok: false, error };
    }
    scope.open = false;
    while (scope.inflight.size > 0) await Promise.allSettled([...scope.inflight]);
    return { outcome, poisoned: scope.poisoned, deferral };
  }
}

/** Rolls the connection's transaction back; if that fails, has the pool replace the connection. */
export async function rollback(connection: SqliteConnection): Promise<void> {
  try {
    await queryRun(connection, 'ROLLBACK', []);
  } catch (err) {
    // SQLite may already have rolled back (e.g. SQLITE_FULL); if not, the
    // connection is in an unknown state: have the pool replace it.
    if (!/no transaction is active/.test(String((err as Error).message))) connection.__knex__disposed = err;
  }
}
