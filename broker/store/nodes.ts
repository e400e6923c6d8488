/**
 * nodes and node_join_tokens (migration 003): the broker nodes of a
 * cluster sharing this database, their heartbeats, presence per node, and
 * the single-use join tokens that let a new node take the cluster's keys.
 */
import { toDate, toDateOrNull, toMillis, toNumberOrNull, type Db } from './db.js';
import type { NewNodeJoinToken, NodeRecord } from './types.js';

interface NodeRow {
  id: string;
  name: string;
  ssh_endpoint: string;
  api_url: string | null;
  internal_address: string | null;
  relay_key: string | null;
  version: string;
  started_at: number | string;
  heartbeat_at: number | string;
  stopped_at: number | string | null;
  down_at: number | string | null;
  rotation_ack: number | string | null;
}

function fromRow(row: NodeRow): NodeRecord {
  return {
    id: row.id,
    name: row.name,
    sshEndpoint: row.ssh_endpoint,
    apiUrl: row.api_url,
    internalAddress: row.internal_address,
    relayKey: row.relay_key,
    version: row.version,
    startedAt: toDate(row.started_at),
    heartbeatAt: toDate(row.heartbeat_at),
    stoppedAt: toDateOrNull(row.stopped_at),
    downAt: toDateOrNull(row.down_at),
    rotationAck: toNumberOrNull(row.rotation_ack),
  };
}

/** A node (re)starting: its row as it is now, heartbeat = startedAt, neither stopped nor down. */
export async function registerNode(db: Db, node: Omit<NodeRecord, 'heartbeatAt' | 'stoppedAt' | 'downAt' | 'rotationAck'>): Promise<void> {
  const row = {
    id: node.id, name: node.name, ssh_endpoint: node.sshEndpoint, api_url: node.apiUrl, internal_address: node.internalAddress,
    relay_key: node.relayKey, version: node.version, started_at: toMillis(node.startedAt), heartbeat_at: toMillis(node.startedAt), stopped_at: null, down_at: null,
  };
  const { id: _id, ...update } = row;
  await db.run(db.qb('nodes').insert(row).onConflict('id').merge(update));
}

/** Returns false when the node has no row (deleted by an operator): it should register again. */
export async function heartbeatNode(db: Db, id: string, at: Date): Promise<boolean> {
  return (await db.run('UPDATE nodes SET heartbeat_at = ?, stopped_at = NULL, down_at = NULL WHERE id = ?', [toMillis(at), id])) === 1;
}

/**
 * Compare-and-swap: true if this call marked the node down (running, not
 * already down, its heartbeat older than STALEBEFORE); false if it was not
 * stale, stopped, already marked, or unknown. Of several nodes seeing the
 * same dead node, exactly one gets true.
 */
export async function markNodeDown(db: Db, id: string, staleBefore: Date, at: Date): Promise<boolean> {
  return (
    (await db.run('UPDATE nodes SET down_at = ? WHERE id = ? AND down_at IS NULL AND stopped_at IS NULL AND heartbeat_at < ?', [toMillis(at), id, toMillis(staleBefore)])) === 1
  );
}

export async function markNodeStopped(db: Db, id: string, at: Date): Promise<void> {
  await db.run('UPDATE nodes SET stopped_at = ? WHERE id = ?', [toMillis(at), id]);
}

export async function listNodes(db: Db): Promise<NodeRecord[]> {
  return (await db.all<NodeRow>('SELECT * FROM nodes ORDER BY started_at, id')).map(fromRow);
}

export async function findNode(db: Db, id: string): Promise<NodeRecord | null> {
  const row = await db.first<NodeRow>('SELECT * FROM nodes WHERE id = ?', [id]);
  return row ? fromRow(row) : null;
}

/**
 * Presence a node no longer holds: every device marked online on NODE goes
 * offline (a node that died, or this node starting afresh). Returns how many.
 */
export async function clearPresenceOfNode(db: Db, nodeId: string, lastSeen: Date): Promise<number> {
  return db.run(
    'UPDATE devices SET online = ?, connected_since = NULL, remote_addr = NULL, node_id = NULL, last_seen_at = COALESCE(last_seen_at, ?) WHERE node_id = ?',
    [false, toMillis(lastSeen), nodeId],
  );
}

/** Devices online, by the node holding their tunnel (devices online without a node are not counted). */
export async function countOnlineDevicesByNode(db: Db): Promise<Record<string, number>> {
  const rows = await db.all<{ node_id: string; n: number | string }>('SELECT node_id, COUNT(*) AS n FROM devices WHERE online = ? AND node_id IS NOT NULL GROUP BY node_id', [true]);
  return Object.fromEntries(rows.map((r) => [r.node_id, Number(r.n)]));
}

export async function insertNodeJoinToken(db: Db, t: NewNodeJoinToken): Promise<void> {
  await db.run(
    db.qb('node_join_tokens').insert({
      id: t.id, token_hash: t.tokenHash, sealed: t.sealed, created_at: toMillis(t.createdAt), created_by: t.createdBy, expires_at: toMillis(t.expiresAt),
    }),
  );
}

/** Compare-and-swap: the sealed keys of an unused, unexpired token, marking it used by NODE; null otherwise. */
export async function redeemNodeJoinToken(db: Db, tokenHash: string, nodeId: string, now: Date): Promise<string | null> {
  const ms = toMillis(now);
  const row = await db.first<{ sealed: string }>(
    `UPDATE node_join_tokens SET used_at = ?, used_by_node = ?
     WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?
     RETURNING sealed`,
    [ms, nodeId, tokenHash, ms],
  );
  return row?.sealed ?? null;
}
