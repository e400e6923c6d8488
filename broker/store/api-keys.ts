/** api_keys: operator and factory credentials, stored only as a hash. */
import { toDate, toDateOrNull, toMillis, toMillisOrNull, type Db } from './db.js';
import type { ApiKeyRecord, NewApiKey } from './types.js';

interface ApiKeyRow {
  id: string;
  name: string;
  role: ApiKeyRecord['role'];
  key_hash: string;
  created_at: number | string;
  created_by: string;
  revoked_at: number | string | null;
  last_used_at: number | string | null;
  expires_at: number | string | null;
}

function fromRow(row: ApiKeyRow): ApiKeyRecord {
  return {
    id: row.id,
    name: row.name,
    role: row.role,
    keyHash: row.key_hash,
    createdAt: toDate(row.created_at),
    createdBy: row.created_by,
    revokedAt: toDateOrNull(row.revoked_at),
    lastUsedAt: toDateOrNull(row.last_used_at),
    expiresAt: toDateOrNull(row.expires_at),
  };
}

export async function insertApiKey(db: Db, k: NewApiKey): Promise<void> {
  await db.run(
    db.qb('api_keys').insert({
      id: k.id,
      name: k.name,
      role: k.role,
      key_hash: k.keyHash,
      created_at: toMillis(k.createdAt),
      created_by: k.createdBy,
      expires_at: toMillisOrNull(k.expiresAt),
    }),
  );
}

export async function findApiKey(db: Db, id: string): Promise<ApiKeyRecord | null> {
  const row = await db.first<ApiKeyRow>('SELECT * FROM api_keys WHERE id = ?', [id]);
  return row ? fromRow(row) : null;
}

/** last_used_at is coarse on purpose: one write per key per minute, not per request. */
const TOUCH_RESOLUTION_MS = 60_000;

export async function touchApiKey(db: Db, id: string, now: Date): Promise<void> {
  const ms = toMillis(now);
  await db.run('UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)', [
    ms,
    id,
    ms - TOUCH_RESOLUTION_MS,
  ]);
}

export async function listApiKeys(db: Db): Promise<ApiKeyRecord[]> {
  const rows = await db.all<ApiKeyRow>('SELECT * FROM api_keys ORDER BY created_at, id');
  return rows.map(fromRow);
}

export async function revokeApiKey(db: Db, id: string, now: Date): Promise<boolean> {
  const changed = await db.run('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', [toMillis(now), id]);
  return changed === 1;
}
