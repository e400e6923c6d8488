/**
 * Group commit (broker/store/group-commit.ts): members batched into one
 * transaction, each in its own savepoint. The committer runs here on a raw
 * node-sqlite3 connection, so that a test can write any SQL (e.g. a deferred
 * foreign key that fails only at COMMIT). Group commit as Store callers see
 * it, through openStore: transactions.test.ts.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import knex from 'knex';
import sqlite3 from 'sqlite3';
import { isBrokerError } from '../../../broker/core/errors.js';
import { connectionDb } from '../../../broker/store/connection-db.js';
import type { Db } from '../../../broker/store/db.js';
import { GroupCommitter } from '../../../broker/store/group-commit.js';
import { queryAll, type SqliteConnection } from '../../../broker/store/sqlite-driver.js';

const qb = knex({ client: 'sqlite3', useNullAsDefault: true });
test.after.always(() => qb.destroy());

interface Rig {
  committer: GroupCommitter;
  /** Rows of `SELECT ...` on another connection: what is committed. */
  committed: (sql: string) => Promise<unknown[]>;
  /** BEGINs, SAVEPOINTs, ROLLBACKs, COMMITs the committer issued, in order. */
  control: string[];
}

function open(file: string): Promise<SqliteConnection> {
  return new Promise((resolve, reject) => {
    const db = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(db as SqliteConnection)));
  });
}
const exec = (db: sqlite3.Database, sql: string) => new Promise<void>((res, rej) => db.exec(sql, (err) => (err ? rej(err) : res())));
const close = (db: sqlite3.Database) => new Promise<void>((res) => db.close(() => res()));

async function withRig(fn: (rig: Rig) => Promise<void>, schema = ''): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-gc-'));
  const file = join(dir, 'gc.db');
  const writer = await open(file);
  const reader = await open(file);
  const control: string[] = [];
  writer.on('trace', (sql: string) => {
    if (/^(BEGIN|SAVEPOINT|ROLLBACK|COMMIT)/.test(sql)) control.push(sql);
  });
  try {
    await exec(writer, `PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;
      CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE);
      CREATE TABLE parent (id INTEGER PRIMARY KEY);
      CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
      ${schema}`);
    control.length = 0;
    const committer = new GroupCommitter({
      source: { acquire: async () => writer, release: async () => {} },
      begin: 'BEGIN IMMEDIATE',
      dbFor: (connection, scope) => connectionDb(qb, connection, scope, true),
      queueTimeoutMs: 2000,
      maxBatch: 64,
    });
    await fn({ committer, control, committed: (sql) => queryAll(reader, sql, []) });
    await committer.close();
  } finally {
    for (const c of [writer, reader]) {
      for (const s of c.__statements?.values() ?? []) await s.then((st) => new Promise((r) => st.finalize(r)), () => {});
      await close(c);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

const insert = (db: Db, v: string) => db.run('INSERT INTO t (v) VALUES (?)', [v]);
const values = async (rig: Rig) => ((await rig.committed('SELECT v FROM t ORDER BY id')) as Array<{ v: string }>).map((r) => r.v);

/**
 * Submits a member that holds the connection until `open()`: whatever is
 * submitted meanwhile forms the next batch.
 */
async function gate(rig: Rig): Promise<{ done: Promise<void>; open: () => void }> {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  let entered!: () => void;
  const running = new Promise<void>((r) => (entered = r));
  const done = rig.committer.submit(async (db) => {
    await insert(db, 'gate');
    entered();
    await opened;
  });
  await running;
  return { done, open };
}

test('ok/members queued behind a running batch share one transaction, in submission order', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const seen: unknown[][] = [];
    const rest = ['a', 'b', 'c', 'd'].map((v) =>
      rig.committer.submit(async (db) => {
        seen.push((await db.all('SELECT v FROM t ORDER BY id')).map((r) => (r as { v: string }).v));
        await insert(db, v);
        return v;
      }),
    );
    g.open();
    t.deepEqual(await Promise.all([first, ...rest]), [undefined, 'a', 'b', 'c', 'd']);
    t.deepEqual(await values(rig), ['gate', 'a', 'b', 'c', 'd']);
    // each member saw those before it, in order
    t.deepEqual(seen, [['gate'], ['gate', 'a'], ['gate', 'a', 'b'], ['gate', 'a', 'b', 'c']]);
    t.deepEqual(rig.control, [
      'BEGIN IMMEDIATE', 'COMMIT',
      'BEGIN IMMEDIATE', 'SAVEPOINT member', 'SAVEPOINT member', 'SAVEPOINT member', 'COMMIT',
    ]);
  });
});

test('fail/a throwing member rolls back only its own writes and gets its own error', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const boom = new Error('boom');
    const members = ['a', 'b', 'c'].map((v) =>
      rig.committer.submit(async (db) => {
        await insert(db, v);
        await insert(db, `${v}2`);
        if (v === 'b') throw boom;
        return v;
      }),
    );
    g.open();
    await first;
    const results = await Promise.allSettled(members);
    t.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
    t.is((results[1] as PromiseRejectedResult).reason, boom); // the member's error, unchanged
    t.deepEqual(await values(rig), ['gate', 'a', 'a2', 'c', 'c2']);
    t.deepEqual(rig.control.slice(2), ['BEGIN IMMEDIATE', 'SAVEPOINT member', 'ROLLBACK TO member', 'SAVEPOINT member', 'COMMIT']);
  });
});

test('fail/the first member of a batch throwing: its transaction is rolled back, the next one begins afresh', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const failing = rig.committer.submit(async (db) => {
      await insert(db, 'x');
      throw new Error('first fails');
    });
    const ok = rig.committer.submit(async (db) => insert(db, 'y'));
    g.open();
    await first;
    await t.throwsAsync(failing, { message: 'first fails' });
    await ok;
    t.deepEqual(await values(rig), ['gate', 'y']);
    t.deepEqual(rig.control.slice(2), ['BEGIN IMMEDIATE', 'ROLLBACK', 'BEGIN IMMEDIATE', 'COMMIT']);
  });
});

test('fail/COMMIT fails: every member that had not failed on its own fails, nothing is committed', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const own = new Error('own');
    const members = [
      rig.committer.submit(async (db) => insert(db, 'a')),
      // a deferred foreign key: accepted now, refused at COMMIT
      rig.committer.submit(async (db) => db.run('INSERT INTO child (parent_id) VALUES (42)')),
      rig.committer.submit(async (db) => {
        await insert(db, 'c');
        throw own;
      }),
      rig.committer.submit(async (db) => insert(db, 'd')),
    ];
    g.open();
    await first;
    const results = await Promise.allSettled(members);
    t.deepEqual(results.map((r) => r.status), ['rejected', 'rejected', 'rejected', 'rejected']);
    const reasons = results.map((r) => (r as PromiseRejectedResult).reason as Error);
    for (const i of [0, 1, 3]) t.true(isBrokerError(reasons[i], 'INTERNAL'), String(reasons[i]));
    t.is(reasons[2], own);
    t.deepEqual(await values(rig), ['gate']);
    t.deepEqual(await rig.committed('SELECT * FROM child'), []);
    t.is(rig.control.at(-2), 'COMMIT');
    t.is(rig.control.at(-1), 'ROLLBACK');
    // and the committer goes on
    await rig.committer.submit(async (db) => insert(db, 'after'));
    t.deepEqual(await values(rig), ['gate', 'after']);
  });
});

test('fail/a statement error that may end the transaction (SQLITE_FULL) fails the whole batch, even if the member caught it', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const a = rig.committer.submit(async (db) => insert(db, 'a'));
    const full = rig.committer.submit(async (db) => {
      await db.run('PRAGMA max_page_count = 1');
      // the member swallows the error and resolves
      return db.run(`INSERT INTO t (v) VALUES (randomblob(100000))`).then(() => 'inserted', (err: Error & { code?: string }) => err.code);
    });
    // SQLite rolled the transaction back: without the batch noticing, this
    // member's SAVEPOINT would open a new one, COMMIT would commit it, and
    // `a` would be told its lost write was committed.
    const c = rig.committer.submit(async (db) => insert(db, 'c'));
    g.open();
    await first;
    const results = await Promise.allSettled([a, full, c]);
    t.deepEqual(results.map((r) => r.status), ['rejected', 'rejected', 'rejected']);
    for (const r of results) t.true(isBrokerError((r as PromiseRejectedResult).reason, 'INTERNAL'));
    t.deepEqual(await values(rig), ['gate']);
  });
});

test('fail/statements a throwing member left in flight finish before its rollback, and do not leak', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const first = g.done;
    const failing = rig.committer.submit(async (db) => {
      // The second run waits in node-sqlite3's queue for the first, a slow
      // one; the member throws before either is done.
      const slow = `INSERT INTO t (v) SELECT 'slow' || MAX(x) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c)`;
      void db.run(slow, [300_000]).catch(() => {});
      void db.run(slow, [1]).catch(() => {});
      throw new Error('early');
    });
    const next = rig.committer.submit(async (db) => insert(db, 'next'));
    g.open();
    await first;
    await t.throwsAsync(failing, { message: 'early' });
    await next;
    t.deepEqual(await values(rig), ['gate', 'next']);
  });
});

test('fail/BEGIN fails (the file is locked by another connection): every member fails STORE_BUSY, none of their statements runs', async (t) => {
  await withRig(async (rig) => {
    await rig.committed('BEGIN IMMEDIATE'); // the rig's other connection takes the write lock
    let started = 0;
    const members = ['a', 'b'].map((v) =>
      rig.committer.submit(async (db) => {
        started++; // fn starts while BEGIN is in flight; its statements wait for it
        await insert(db, v);
      }),
    );
    for (const r of await Promise.allSettled(members)) {
      t.true(isBrokerError((r as PromiseRejectedResult).reason, 'STORE_BUSY'), String((r as PromiseRejectedResult).reason));
    }
    t.is(started, 1);
    await rig.committed('COMMIT');
    t.deepEqual(await values(rig), []);
    await rig.committer.submit(async (db) => insert(db, 'after'));
    t.deepEqual(await values(rig), ['after']);
  });
});

test('fail/a statement issued after the member settled is refused', async (t) => {
  await withRig(async (rig) => {
    let kept: Db | undefined;
    await rig.committer.submit(async (db) => {
      kept = db;
    });
    const err = await t.throwsAsync(insert(kept!, 'late'));
    t.true(isBrokerError(err, 'INTERNAL'));
    t.deepEqual(await values(rig), []);
  });
});

test('fail/a member queued longer than the timeout fails STORE_BUSY; a nested submit cannot deadlock forever', async (t) => {
  await withRig(async (rig) => {
    const started = Date.now();
    const err = await t.throwsAsync(
      rig.committer.submit(async (db) => {
        await insert(db, 'outer');
        // waits for the batch it is part of
        await rig.committer.submit(async (inner) => insert(inner, 'inner'));
      }),
    );
    t.true(isBrokerError(err, 'STORE_BUSY'), String(err));
    t.true(Date.now() - started >= 1900);
    t.deepEqual(await values(rig), []);
  });
});

const T_DEFERRED = { table: 't', columns: ['v'] } as const;

test('ok/deferred rows: inserted once for the batch before COMMIT, in order; a throwing member\'s are dropped', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const members = ['a', 'b', 'c'].map((v) =>
      rig.committer.submit(async (db) => {
        db.defer!(T_DEFERRED, [v]);
        if (v === 'b') throw new Error('b');
      }),
    );
    g.open();
    await g.done;
    t.deepEqual((await Promise.allSettled(members)).map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
    t.deepEqual(await values(rig), ['gate', 'a', 'c']);
  });
});

test('fail/a deferred insert failing at COMMIT fails every member of the batch', async (t) => {
  await withRig(async (rig) => {
    const g = await gate(rig);
    const members = [
      rig.committer.submit(async (db) => insert(db, 'a')),
      rig.committer.submit(async (db) => db.defer!(T_DEFERRED, ['dup'])),
      rig.committer.submit(async (db) => db.defer!(T_DEFERRED, ['dup'])), // UNIQUE (v)
    ];
    g.open();
    await g.done;
    for (const r of await Promise.allSettled(members)) t.true(isBrokerError((r as PromiseRejectedResult).reason, 'INTERNAL'));
    t.deepEqual(await values(rig), ['gate']);
  });
});
