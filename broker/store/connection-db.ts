/**
 * A Db that runs a table module's statements on one node-sqlite3
 * connection: knex compiles (or the SQL text is given), the connection's
 * cached prepared statements execute.
 */
import type { Knex } from 'knex';
import { BrokerError } from '../core/errors.js';
import { insertDeferred, type Binding, type Compilable, type Db } from './db.js';
import { isPoisoning, type MemberScope } from './group-commit.js';
import { queryAll, queryRun, type SqliteConnection } from './sqlite-driver.js';

function compile(query: Compilable | string, bindings: readonly Binding[] = []): { sql: string; bindings: readonly unknown[] } {
  // SQL text is written with `?` placeholders, SQLite's own; a PostgreSQL
  // executor would take it through knex.raw(...).toSQL().toNative().
  return typeof query === 'string' ? { sql: query, bindings } : query.toSQL().toNative();
}

/**
 * A Db on a connection for as long as `scope.open`: a statement issued
 * later (a tx kept past its transaction) would otherwise run on whatever
 * the connection does next, e.g. someone else's transaction. Statements in
 * flight are tracked in the scope, so that a batch can wait for them.
 * `transactional`: the Db of a group-commit member (atomically is inline);
 * otherwise a read connection, where nothing may open a transaction (reads
 * from several callers share it).
 */
export function connectionDb(qb: Knex, connection: SqliteConnection, scope: MemberScope, transactional: boolean): Db {
  const issue = <R>(query: Compilable | string, bindings: readonly Binding[] | undefined, exec: (sql: string, b: readonly unknown[]) => Promise<R>): Promise<R> => {
    if (!scope.open) return Promise.reject(new BrokerError('INTERNAL', 'store: statement issued after its transaction or call ended'));
    if (scope.poisoned !== undefined) return Promise.reject(new BrokerError('INTERNAL', 'store: statement issued after its transaction failed'));
    let c: { sql: string; bindings: readonly unknown[] };
    try {
      c = compile(query, bindings);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const sql = c.sql;
    const bound = c.bindings;
    const p = scope.ready ? scope.ready.then(() => exec(sql, bound)) : exec(sql, bound);
    scope.inflight.add(p);
    p.then(
      () => scope.inflight.delete(p),
      (err: unknown) => {
        scope.inflight.delete(p);
        if (isPoisoning(err)) scope.poisoned ??= err;
      },
    );
    return p;
  };
  const run = (query: Compilable | string, bindings?: readonly Binding[]) => issue(query, bindings, (sql, b) => queryRun(connection, sql, b));
  const deferral = transactional ? scope.deferral : undefined;
  const db: Db = {
    qb,
    all: (query, bindings) => issue(query, bindings, (sql, b) => queryAll(connection, sql, b)),
    first: (query, bindings) => issue(query, bindings, async (sql, b) => (await queryAll<never>(connection, sql, b))[0]),
    run,
    atomically: (fn) =>
      transactional ? fn(db) : Promise.reject(new BrokerError('INTERNAL', 'store: a read operation cannot open a transaction')),
    defer: deferral
      ? (insert, row) => {
          if (!scope.open) throw new BrokerError('INTERNAL', 'store: statement issued after its transaction or call ended');
          deferral.own.push([insert, row]);
        }
      : undefined,
    flushDeferred: deferral
      ? async () => {
          const others = deferral.batch.splice(0);
          deferral.flushedForOthers.push(...others);
          const rows = [...others, ...deferral.own.splice(0)];
          if (rows.length === 0) return;
          try {
            await insertDeferred(run, rows);
          } catch (err) {
            // Those rows are now nowhere: the batch must not commit.
            scope.poisoned ??= err;
            throw err;
          }
        }
      : undefined,
  };
  return db;
}

