/**
 * trust_rotations (migration 005): the rotation of one trust root at a
 * time, cluster-wide (broker/core/rotation.ts drives it), each node's ack
 * of the next key, and the devices' progress counted from certificates.
 */
import { BrokerError } from '../core/errors.js';
import { isUniqueViolation, toDate, toDateOrNull, toMillis, type Db } from './db.js';
import type {
  NewTrustRotation, RotationDeviceCounts, RotationLearnedBy, RotationOutcome, RotationPhase, TrustRootName, TrustRotationRecord,
} from './types.js';

interface RotationRow {
  id: number | string;
  root: TrustRootName;
  phase: RotationPhase;
  next_sealed: string;
  from_fingerprint: string;
  next_fingerprint: string;
  started_at: number | string;
  started_by: string;
  learn_at: number | string | null;
  finished_at: number | string | null;
  finished_by: string | null;
  outcome: RotationOutcome | null;
}

function fromRow(row: RotationRow): TrustRotationRecord {
  return {
    id: Number(row.id),
    root: row.root,
    phase: row.phase,
    nextSealed: row.next_sealed,
    fromFingerprint: row.from_fingerprint,
    nextFingerprint: row.next_fingerprint,
    startedAt: toDate(row.started_at),
    startedBy: row.started_by,
    learnAt: toDateOrNull(row.learn_at),
    finishedAt: toDateOrNull(row.finished_at),
    finishedBy: row.finished_by,
    outcome: row.outcome,
  };
}

/** The unique partial index (one active rotation) turns a racing second start into ROTATION_IN_PROGRESS. */
export async function startRotation(db: Db, r: NewTrustRotation): Promise<TrustRotationRecord> {
  try {
    const row = await db.first<RotationRow>(
      `INSERT INTO trust_rotations (root, phase, next_sealed, from_fingerprint, next_fingerprint, started_at, started_by)
       VALUES (?, 'prepare', ?, ?, ?, ?, ?) RETURNING *`,
      [r.root, r.nextSealed, r.fromFingerprint, r.nextFingerprint, toMillis(r.startedAt), r.startedBy],
    );
    if (!row) throw new BrokerError('INTERNAL', 'store: startRotation returned no row');
    return fromRow(row);
  } catch (err) {
    if (isUniqueViolation(err) || isActiveIndexViolation(err)) throw new BrokerError('ROTATION_IN_PROGRESS', 'a rotation is under way already; commit or roll it back first');
    throw err;
  }
}

/** SQLite names the index rather than columns when an expression index is violated. */
function isActiveIndexViolation(err: unknown): boolean {
  const message = (err as { message?: unknown } | null)?.message;
  const constraint = (err as { constraint?: unknown } | null)?.constraint;
  return constraint === 'trust_rotations_one_active' || (typeof message === 'string' && message.includes('trust_rotations_one_active'));
}

export async function setRotationPhase(db: Db, id: number, from: RotationPhase, to: RotationPhase, at: Date): Promise<boolean> {
  const learnAt = to === 'learn' ? toMillis(at) : null;
  return (
    (await db.run('UPDATE trust_rotations SET phase = ?, learn_at = COALESCE(?, learn_at) WHERE id = ? AND phase = ? AND finished_at IS NULL', [
      to, learnAt, id, from,
    ])) === 1
  );
}

export async function ackRotation(db: Db, nodeId: string, id: number): Promise<boolean> {
  return (await db.run('UPDATE nodes SET rotation_ack = ? WHERE id = ?', [id, nodeId])) === 1;
}

export async function finishRotation(db: Db, id: number, outcome: RotationOutcome, by: string, at: Date): Promise<boolean> {
  return (
    (await db.run('UPDATE trust_rotations SET finished_at = ?, finished_by = ?, outcome = ? WHERE id = ? AND finished_at IS NULL', [toMillis(at), by, outcome, id])) === 1
  );
}

export async function activeRotation(db: Db): Promise<TrustRotationRecord | null> {
  const row = await db.first<RotationRow>('SELECT * FROM trust_rotations WHERE finished_at IS NULL');
  return row ? fromRow(row) : null;
}

export async function findRotation(db: Db, id: number): Promise<TrustRotationRecord | null> {
  const row = await db.first<RotationRow>('SELECT * FROM trust_rotations WHERE id = ?', [id]);
  return row ? fromRow(row) : null;
}

export async function listRotations(db: Db, limit: number): Promise<TrustRotationRecord[]> {
  const n = Math.max(1, Math.min(1000, Math.floor(limit)));
  return (await db.all<RotationRow>('SELECT * FROM trust_rotations ORDER BY id DESC LIMIT ?', [n])).map(fromRow);
}

/**
 * Active devices: not revoked, and seen (a tunnel) or issued a certificate
 * at or after activeSince. Learned: one of their certificates carries the
 * rotation (trust_rotation) or was signed by the next user CA (signed_by).
 * Two statements; a snapshot for an operator, not a decision taken under
 * a lock (commit checks again).
 */
export async function rotationDeviceCounts(db: Db, by: RotationLearnedBy): Promise<RotationDeviceCounts> {
  const since = toMillis(by.activeSince);
  const active = `d.status = 'active' AND (d.last_seen_at >= ? OR EXISTS (SELECT 1 FROM certificates a WHERE a.device_id = d.id AND a.kind = 'device' AND a.issued_at >= ?))`;
  const learned = `EXISTS (SELECT 1 FROM certificates l WHERE l.device_id = d.id AND l.kind = 'device' AND (l.trust_rotation = ? OR l.signed_by = ?))`;
  const bindings = [since, since, by.rotationId, by.signedBy];
  const counts = await db.first<{ active: number | string; learned: number | string | null }>(
    `SELECT COUNT(*) AS active, SUM(CASE WHEN ${learned} THEN 1 ELSE 0 END) AS learned FROM devices d WHERE ${active}`,
    [by.rotationId, by.signedBy, since, since],
  );
  const lagging = await db.all<{ id: string; name: string | null; last_seen_at: number | string | null }>(
    `SELECT d.id, d.name, d.last_seen_at FROM devices d WHERE ${active} AND NOT ${learned}
     ORDER BY d.last_seen_at IS NULL DESC, d.last_seen_at, d.id LIMIT ?`,
    [...bindings, Math.max(0, Math.floor(by.limit))],
  );
  return {
    active: Number(counts?.active ?? 0),
    learned: Number(counts?.learned ?? 0),
    lagging: lagging.map((r) => ({ id: r.id, name: r.name, lastSeenAt: toDateOrNull(r.last_seen_at) })),
  };
}
