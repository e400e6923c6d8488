/** enrollment_tokens: single-use, expiring, stored only as a hash. */
import {
  decodeCursor,
  encodeCursor,
  pageLimit,
  toDate,
  toDateOrNull,
  toMillis,
  toMillisOrNull,
  type Db,
} from './db.js';
import type { NewToken, Page, TokenBatchSummary, TokenFilter, TokenRecord, TokenSelector } from './types.js';

interface TokenRow {
  id: string;
  token_hash: string;
  batch: string | null;
  bind_name: string | null;
  bind_serial: string | null;
  created_at: number | string;
  created_by: string;
  expires_at: number | string;
  used_at: number | string | null;
  used_by_device: string | null;
  revoked_at: number | string | null;
  revoked_by: string | null;
}

function fromRow(row: TokenRow): TokenRecord {
  return {
    id: row.id,
    tokenHash: row.token_hash,
    batch: row.batch,
    bindName: row.bind_name,
    bindSerial: row.bind_serial,
    createdAt: toDate(row.created_at),
    createdBy: row.created_by,
    expiresAt: toDate(row.expires_at),
    usedAt: toDateOrNull(row.used_at),
    usedByDevice: row.used_by_device,
    revokedAt: toDateOrNull(row.revoked_at),
    revokedBy: row.revoked_by,
  };
}

// SQLite allows 32766 bound variables per statement; 8 columns x 500 rows
// stays far below, and below PostgreSQL's 65535 too.
const INSERT_CHUNK = 500;

export async function insertTokens(db: Db, rows: readonly NewToken[]): Promise<void> {
  if (rows.length === 0) return;
  const values = rows.map((r) => ({
    id: r.id,
    token_hash: r.tokenHash,
    batch: r.batch,
    bind_name: r.bindName,
    bind_serial: r.bindSerial,
    created_at: toMillis(r.createdAt),
    created_by: r.createdBy,
    expires_at: toMillis(r.expiresAt),
  }));
  await db.atomically(async (trx) => {
    for (let i = 0; i < values.length; i += INSERT_CHUNK) {
      await trx.run(trx.qb('enrollment_tokens').insert(values.slice(i, i + INSERT_CHUNK)));
    }
  });
}

/** A compare-and-swap: one conditional UPDATE, never read-then-write. */
const REDEEM_SQL = `
  UPDATE enrollment_tokens SET used_at = ?, used_by_device = ?
  WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?`;

export async function redeemToken(db: Db, tokenHash: string, deviceId: string, now: Date): Promise<boolean> {
  const ms = toMillis(now);
  return (await db.run(REDEEM_SQL, [ms, deviceId, tokenHash, ms])) === 1;
}

export async function findTokenByHash(db: Db, tokenHash: string): Promise<TokenRecord | null> {
  const row = await db.first<TokenRow>('SELECT * FROM enrollment_tokens WHERE token_hash = ?', [tokenHash]);
  return row ? fromRow(row) : null;
}

export async function listTokens(db: Db, filter: TokenFilter): Promise<Page<TokenRecord>> {
  const limit = pageLimit(filter);
  const now = toMillis(filter.now);
  const q = db
    .qb('enrollment_tokens')
    .select('*')
    .orderBy([
      { column: 'created_at', order: 'asc' },
      { column: 'id', order: 'asc' },
    ])
    .limit(limit + 1);
  if (filter.batch !== undefined) q.where({ batch: filter.batch });
  switch (filter.status) {
    case undefined:
      break;
    case 'used':
      q.whereNotNull('used_at');
      break;
    case 'revoked':
      q.whereNull('used_at').whereNotNull('revoked_at');
      break;
    case 'expired':
      q.whereNull('used_at').whereNull('revoked_at').where('expires_at', '<=', now);
      break;
    case 'active':
      q.whereNull('used_at').whereNull('revoked_at').where('expires_at', '>', now);
      break;
  }
  if (filter.cursor) {
    const [createdAt, id] = decodeCursor(filter.cursor, ['number', 'string']);
    q.where((w) => w.where('created_at', '>', createdAt!).orWhere((w2) => w2.where('created_at', createdAt!).where('id', '>', id!)));
  }
  const rows = await db.all<TokenRow>(q);
  const items = rows.slice(0, limit).map(fromRow);
  const last = items[items.length - 1];
  return {
    items,
    nextCursor: rows.length > limit && last ? encodeCursor([last.createdAt.getTime(), last.id]) : null,
  };
}

export async function revokeTokens(db: Db, which: TokenSelector, by: string, now: Date): Promise<number> {
  const q = db
    .qb('enrollment_tokens')
    .update({ revoked_at: toMillisOrNull(now), revoked_by: by })
    .whereNull('used_at')
    .whereNull('revoked_at');
  if ('id' in which) q.where({ id: which.id });
  else q.where({ batch: which.batch });
  return db.run(q);
}

export async function countActiveTokens(db: Db, now: Date): Promise<number> {
  const row = await db.first<{ n: number | string }>(
    'SELECT COUNT(*) AS n FROM enrollment_tokens WHERE used_at IS NULL AND revoked_at IS NULL AND expires_at > ?',
    [toMillis(now)],
  );
  return Number(row?.n ?? 0);
}

/** Per batch (null: tokens minted without one) at NOW: how many tokens, used, revoked, expired, still active; newest batch first. */
export async function listTokenBatches(db: Db, now: Date, limit: number): Promise<TokenBatchSummary[]> {
  const ms = toMillis(now);
  const rows = await db.all<Record<string, number | string | null>>(
    `SELECT batch, COUNT(*) AS total,
            SUM(CASE WHEN used_at IS NOT NULL THEN 1 ELSE 0 END) AS used,
            SUM(CASE WHEN used_at IS NULL AND revoked_at IS NOT NULL THEN 1 ELSE 0 END) AS revoked,
            SUM(CASE WHEN used_at IS NULL AND revoked_at IS NULL AND expires_at <= ? THEN 1 ELSE 0 END) AS expired,
            SUM(CASE WHEN used_at IS NULL AND revoked_at IS NULL AND expires_at > ? THEN 1 ELSE 0 END) AS active,
            MIN(created_at) AS first_created, MAX(created_at) AS last_created, MAX(expires_at) AS last_expires
     FROM enrollment_tokens GROUP BY batch ORDER BY MAX(created_at) DESC LIMIT ?`,
    [ms, ms, limit],
  );
  return rows.map((r) => ({
    batch: r.batch === null ? null : String(r.batch),
    total: Number(r.total), used: Number(r.used), revoked: Number(r.revoked), expired: Number(r.expired), active: Number(r.active),
    firstCreatedAt: toDate(r.first_created as number), lastCreatedAt: toDate(r.last_created as number), lastExpiresAt: toDate(r.last_expires as number),
  }));
}
