/**
 * port_blocks: each device holds one block of the pool's contiguous ports.
 * The primary key (first_port) makes double allocation impossible and the
 * UNIQUE device_id makes a second block per device impossible, whatever the
 * callers do; allocation itself is a single upsert statement.
 */
import { BrokerError } from '../core/errors.js';
import { isValidPool, poolBlockCount, type PortBlock, type PortPool } from '../core/port-pool.js';
import { constraintViolation, isUniqueViolation, toMillis, type Db } from './db.js';
import type { PortPoolUsage } from './types.js';

interface BlockRow {
  first_port: number | string;
  last_port: number | string;
}

function checkPool(pool: PortPool): void {
  if (!isValidPool(pool)) throw new BrokerError('CONFIG_INVALID', 'invalid port pool');
}

function toBlock(row: BlockRow): PortBlock {
  return { first: Number(row.first_port), last: Number(row.last_port) };
}

/**
 * The pool's layout is written once, in broker/core/port-pool.ts (blocks of
 * perDevice ports from first, never a trailing partial block); this
 * statement is the one place that must implement it in SQL. It does so by
 * construction: a new block starts at first or right after the highest
 * block of the pool, a reused block has perDevice ports, and none ends past
 * last. Change the layout there, change this statement with it.
 *
 * One statement: the candidate is the lowest same-size block of the pool
 * whose quarantine has ended, else the block right after the highest one.
 * A reusable candidate already exists, so the INSERT conflicts on
 * first_port and the DO UPDATE takes it over, re-checking on the row itself
 * that it is still reusable. A block is thus never handed out twice, by
 * construction of the primary key, whatever the concurrency. No row back
 * means the pool is full — or, with several writers (PostgreSQL), that a
 * concurrent allocation took the candidate first: hence the retries. With
 * SQLite's single writer that never happens.
 */
const ALLOCATE_SQL = `
  INSERT INTO port_blocks (first_port, last_port, device_id)
  SELECT c.first_port, c.first_port + ? - 1, ?
  FROM (SELECT COALESCE(
          (SELECT MIN(first_port) FROM port_blocks
           WHERE released_at IS NOT NULL AND quarantine_until <= ?
             AND first_port >= ? AND last_port <= ? AND last_port - first_port = ?),
          (SELECT last_port FROM port_blocks
           WHERE first_port >= ? AND first_port <= ?
           ORDER BY first_port DESC LIMIT 1) + 1,
          ?) AS first_port
        LIMIT 1) AS c -- LIMIT keeps SQLite from inlining c, which would run the subqueries twice
  WHERE c.first_port + ? - 1 <= ?
  ON CONFLICT (first_port) DO UPDATE
    SET device_id = excluded.device_id, released_at = NULL, quarantine_until = NULL
    WHERE port_blocks.released_at IS NOT NULL AND port_blocks.quarantine_until <= ?
  RETURNING first_port, last_port`;
const ALLOCATE_ATTEMPTS = 3;

async function takeBlock(db: Db, deviceId: string, pool: PortPool, now: number): Promise<PortBlock | null> {
  const { first, last, perDevice } = pool;
  for (let attempt = 0; attempt < ALLOCATE_ATTEMPTS; attempt++) {
    const row = await db.first<BlockRow>(ALLOCATE_SQL, [
      perDevice, deviceId,
      now, first, last, perDevice - 1,
      first, last,
      first,
      perDevice, last,
      now,
    ]);
    if (row) return toBlock(row);
  }
  return null;
}

export async function allocatePortBlock(db: Db, deviceId: string, pool: PortPool, now: Date): Promise<PortBlock> {
  checkPool(pool);
  const at = toMillis(now);
  return db.atomically(async (trx) => {
    let block: PortBlock | null;
    // Several writers: one allocation at a time, each seeing the last one's block.
    await trx.lock?.('port_blocks');
    try {
      block = await takeBlock(trx, deviceId, pool, at);
    } catch (err) {
      if (isUniqueViolation(err, 'port_blocks.device_id')) {
        throw new BrokerError('INTERNAL', 'store: device already holds a port block');
      }
      if (constraintViolation(err)?.kind === 'foreign-key') throw new BrokerError('DEVICE_UNKNOWN', 'unknown device');
      throw err;
    }
    if (!block) throw new BrokerError('PORT_POOL_EXHAUSTED', 'no free port block');
    await trx.run('UPDATE devices SET port_first = ?, port_last = ? WHERE id = ?', [block.first, block.last, deviceId]);
    return block;
  });
}

export async function releasePortBlock(db: Db, deviceId: string, opts: { quarantineUntil: Date; now: Date }): Promise<boolean> {
  const until = toMillis(opts.quarantineUntil);
  // max(until, latest valid_before) as CASE: MAX(a, b) is SQLite-only and
  // GREATEST is not in SQLite.
  const latest = '(SELECT MAX(valid_before) FROM certificates WHERE device_id = ?)';
  const changed = await db.run(
    `UPDATE port_blocks
     SET released_at = ?, quarantine_until = CASE WHEN COALESCE(${latest}, 0) > ? THEN ${latest} ELSE ? END
     WHERE device_id = ? AND released_at IS NULL`,
    [toMillis(opts.now), deviceId, until, deviceId, until, deviceId],
  );
  return changed === 1;
}

export async function portPoolUsage(db: Db, pool: PortPool, now: Date): Promise<PortPoolUsage> {
  checkPool(pool);
  const row = await db.first<{ allocated: number | string; quarantined: number | string }>(
    `SELECT COALESCE(SUM(CASE WHEN released_at IS NULL THEN 1 ELSE 0 END), 0) AS allocated,
            COALESCE(SUM(CASE WHEN released_at IS NOT NULL AND quarantine_until > ? THEN 1 ELSE 0 END), 0) AS quarantined
     FROM port_blocks WHERE first_port >= ? AND last_port <= ?`,
    [toMillis(now), pool.first, pool.last],
  );
  const total = poolBlockCount(pool);
  const allocated = Number(row?.allocated ?? 0);
  const quarantined = Number(row?.quarantined ?? 0);
  return { total, allocated, quarantined, free: Math.max(0, total - allocated - quarantined) };
}
