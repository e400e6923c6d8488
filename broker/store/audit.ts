/** audit_events and renew_nonces: append-mostly tables. */
import { BrokerError } from '../core/errors.js';
import { decodeCursor, encodeCursor, pageLimit, parseJsonObject, toDate, toMillis, type Db, type DeferredInsert } from './db.js';
import type { AuditEvent, AuditFilter, NewAuditEvent, Page } from './types.js';

interface AuditRow {
  id: number | string;
  at: number | string;
  actor: string;
  action: string;
  target: string | null;
  remote_addr: string | null;
  outcome: AuditEvent['outcome'];
  details: string;
}

function fromRow(row: AuditRow): AuditEvent {
  return {
    id: Number(row.id),
    at: toDate(row.at),
    actor: row.actor,
    action: row.action,
    target: row.target,
    remoteAddr: row.remote_addr,
    outcome: row.outcome,
    details: parseJsonObject(row.details),
  };
}

const INSERT_SQL = `
  INSERT INTO audit_events (at, actor, action, target, remote_addr, outcome, details)
  VALUES (?, ?, ?, ?, ?, ?, ?)`;
const DEFERRED_INSERT: DeferredInsert = {
  table: 'audit_events',
  columns: ['at', 'actor', 'action', 'target', 'remote_addr', 'outcome', 'details'],
};

/**
 * In a transaction the row is deferred (Db.defer): inserted with the
 * batch's other events just before COMMIT, in the same transaction, so an
 * event still commits or rolls back with the change it records, and event
 * ids follow commit order. Checked here, so that the deferred insert cannot
 * fail on this row.
 */
export async function appendAudit(db: Db, e: NewAuditEvent): Promise<void> {
  const text = (v: unknown): boolean => typeof v === 'string';
  if (![e.actor, e.action, e.outcome].every(text) || ![e.target, e.remoteAddr].every((v) => v === null || text(v))) {
    throw new BrokerError('INTERNAL', 'store: malformed audit event');
  }
  const row = [toMillis(e.at), e.actor, e.action, e.target, e.remoteAddr, e.outcome, JSON.stringify(e.details ?? {})] as const;
  if (db.defer) db.defer(DEFERRED_INSERT, row);
  else await db.run(INSERT_SQL, row);
}

export async function listAudit(db: Db, filter: AuditFilter): Promise<Page<AuditEvent>> {
  await db.flushDeferred?.(); // this transaction's own events, and its batch's
  const limit = pageLimit(filter);
  // id is monotonic with insertion, so it alone orders and pages the log.
  const q = db.qb('audit_events').select('*').orderBy('id', 'asc').limit(limit + 1);
  if (filter.since !== undefined) q.where('at', '>=', toMillis(filter.since));
  if (filter.action !== undefined) q.where({ action: filter.action });
  if (filter.actor !== undefined) q.where({ actor: filter.actor });
  if (filter.target !== undefined) q.where({ target: filter.target });
  if (filter.until !== undefined) q.where('at', '<', toMillis(filter.until));
  if (filter.cursor) {
    const [id] = decodeCursor(filter.cursor, ['number']);
    q.where('id', '>', id!);
  }
  const rows = await db.all<AuditRow>(q);
  const items = rows.slice(0, limit).map(fromRow);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.length > limit && last ? encodeCursor([last.id]) : null };
}

/**
 * What audit retention may delete: refusals and failures (an error code,
 * `refused`). Rows of what happened - `ok` (enrollments, renewals,
 * revocations, mints, keys), `allowed` (an operator's connection), `closed`
 * (a session the gateway ended) - are kept.
 */
const KEPT_OUTCOMES = ['ok', 'allowed', 'closed'] as const;

/** Deletes failure rows older than BEFORE; returns how many. */
export async function pruneAuditFailures(db: Db, before: Date): Promise<number> {
  return db.run(`DELETE FROM audit_events WHERE at < ? AND outcome NOT IN (${KEPT_OUTCOMES.map(() => '?').join(', ')})`, [toMillis(before), ...KEPT_OUTCOMES]);
}

/** Rows in the audit trail (the metric of its size). */
export async function countAudit(db: Db): Promise<number> {
  const row = await db.first<{ n: number | string }>('SELECT COUNT(*) AS n FROM audit_events');
  return Number(row?.n ?? 0);
}

/**
 * The primary key detects a replay; ON CONFLICT DO NOTHING (rather than
 * catching the violation) keeps a PostgreSQL transaction usable afterwards.
 * Nonces must outlive the renewal request's freshness window, or a request
 * could be replayed once its nonce is pruned.
 */
export async function insertNonce(db: Db, nonce: string, deviceId: string, expiresAt: Date): Promise<boolean> {
  const inserted = await db.first(
    'INSERT INTO renew_nonces (nonce, device_id, expires_at) VALUES (?, ?, ?) ON CONFLICT (nonce) DO NOTHING RETURNING nonce',
    [nonce, deviceId, toMillis(expiresAt)],
  );
  return inserted !== undefined;
}

export async function pruneNonces(db: Db, now: Date): Promise<number> {
  return db.run('DELETE FROM renew_nonces WHERE expires_at <= ?', [toMillis(now)]);
}
