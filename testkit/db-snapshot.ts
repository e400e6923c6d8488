/**
 * A read-only look at a broker's SQLite file from the outside, to show that a
 * refused request changed nothing. The audit trail is left out on purpose:
 * refusals are audited.
 */
import sqlite3 from 'sqlite3';

const STATE_TABLES = ['devices', 'enrollment_tokens', 'port_blocks', 'certificates', 'serial_counter', 'api_keys', 'renew_nonces'];

function all(db: sqlite3.Database, sql: string): Promise<unknown[]> {
  return new Promise((resolve, reject) => db.all(sql, (err, rows) => (err ? reject(err) : resolve(rows))));
}

export async function snapshotState(filename: string): Promise<Record<string, unknown[]>> {
  const db = await new Promise<sqlite3.Database>((resolve, reject) => {
    const handle = new sqlite3.Database(filename, sqlite3.OPEN_READONLY, (err) => (err ? reject(err) : resolve(handle)));
  });
  try {
    const out: Record<string, unknown[]> = {};
    for (const table of STATE_TABLES) {
      const rows = (await all(db, `SELECT * FROM ${table} ORDER BY rowid`)) as Array<Record<string, unknown>>;
      // An API key's last use is bookkeeping, not state a refusal could corrupt.
      out[table] = rows.map(({ last_used_at: _lastUsed, ...rest }) => rest);
    }
    return out;
  } finally {
    await new Promise<void>((resolve) => db.close(() => resolve()));
  }
}

export async function countRows(filename: string, sql: string): Promise<number> {
  const db = new sqlite3.Database(filename, sqlite3.OPEN_READONLY);
  try {
    const rows = (await all(db, sql)) as Array<{ n: number }>;
    return rows[0]!.n;
  } finally {
    await new Promise<void>((resolve) => db.close(() => resolve()));
  }
}
