/** devices: enrolled keys, their port block, status and live state. */
import { BrokerError } from '../core/errors.js';
import {
  decodeCursor,
  encodeCursor,
  isPostgres,
  isUniqueViolation,
  likeLiteral,
  pageLimit,
  parseJsonObject,
  toBool,
  toDate,
  toDateOrNull,
  toMillis,
  toMillisOrNull,
  toNumberOrNull,
  type Db,
} from './db.js';
import { PREFIXED_CERT_COLUMNS, prefixedCertificate } from './certs.js';
import type { CertificateRecord, DeviceCounts, DeviceFilter, DevicePresence, DeviceRecord, Labels, NewDevice, Page } from './types.js';

interface DeviceRow {
  id: string;
  name: string | null;
  hardware_serial: string | null;
  public_key: string;
  key_fingerprint: string;
  port_first: number | string | null;
  port_last: number | string | null;
  status: 'active' | 'revoked';
  labels: string;
  token_id: string | null;
  created_at: number | string;
  last_seen_at: number | string | null;
  revoked_at: number | string | null;
  revoked_by: string | null;
  revoke_reason: string | null;
  online: number | boolean;
  connected_since: number | string | null;
  remote_addr: string | null;
  node_id?: string | null;
}

function toLabels(text: string): Labels {
  const labels: Labels = {};
  for (const [k, v] of Object.entries(parseJsonObject(text))) {
    if (typeof v === 'string') labels[k] = v;
  }
  return labels;
}

function fromRow(row: DeviceRow): DeviceRecord {
  return {
    id: row.id,
    name: row.name,
    hardwareSerial: row.hardware_serial,
    publicKey: row.public_key,
    keyFingerprint: row.key_fingerprint,
    labels: toLabels(row.labels),
    tokenId: row.token_id,
    createdAt: toDate(row.created_at),
    portFirst: toNumberOrNull(row.port_first),
    portLast: toNumberOrNull(row.port_last),
    status: row.status,
    lastSeenAt: toDateOrNull(row.last_seen_at),
    revokedAt: toDateOrNull(row.revoked_at),
    revokedBy: row.revoked_by,
    revokeReason: row.revoke_reason,
    online: toBool(row.online),
    connectedSince: toDateOrNull(row.connected_since),
    remoteAddr: row.remote_addr,
    nodeId: row.node_id ?? null,
  };
}

/** Unique violations a caller can act on; anything else stays INTERNAL. */
function mapDeviceConflict(err: unknown): never {
  if (isUniqueViolation(err, 'devices.key_fingerprint')) {
    throw new BrokerError('KEY_ALREADY_ENROLLED', 'this public key is already enrolled');
  }
  if (isUniqueViolation(err, 'devices.name')) {
    throw new BrokerError('NAME_TAKEN', 'a device with this name already exists');
  }
  throw err;
}

const INSERT_SQL = `
  INSERT INTO devices (id, name, hardware_serial, public_key, key_fingerprint, labels, token_id, created_at, status, online)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)`;

export async function insertDevice(db: Db, d: NewDevice): Promise<void> {
  try {
    await db.run(INSERT_SQL, [
      d.id,
      d.name,
      d.hardwareSerial,
      d.publicKey,
      d.keyFingerprint,
      JSON.stringify(d.labels),
      d.tokenId,
      toMillis(d.createdAt),
      false,
    ]);
  } catch (err) {
    mapDeviceConflict(err);
  }
}

/** In a transaction on PostgreSQL, a device row read there is locked until it ends (Db.lockRows). */
function forUpdate(db: Db, alias?: string): string {
  return db.lockRows ? ` FOR UPDATE${alias ? ` OF ${alias}` : ''}` : '';
}

// Fixed SQL text per lookup column (never built from input).
async function findBy(db: Db, column: 'id' | 'name' | 'key_fingerprint', value: string): Promise<DeviceRecord | null> {
  const row = await db.first<DeviceRow>(`SELECT * FROM devices WHERE ${column} = ?${forUpdate(db)}`, [value]);
  return row ? fromRow(row) : null;
}

export const findDevice = (db: Db, id: string) => findBy(db, 'id', id);

/** One statement for what renewal checks first: the device and its latest device certificate (certs.latestCertificateOfDevice). */
export async function findDeviceWithLatestCertificate(
  db: Db,
  id: string,
): Promise<{ device: DeviceRecord; latest: CertificateRecord | null } | null> {
  const row = await db.first<DeviceRow & Record<string, unknown>>(
    `SELECT d.*, ${PREFIXED_CERT_COLUMNS}
     FROM devices d
     LEFT JOIN certificates c
       ON c.serial = (SELECT serial FROM certificates WHERE device_id = d.id AND kind = 'device' ORDER BY serial DESC LIMIT 1)
     WHERE d.id = ?${forUpdate(db, 'd')}`,
    [id],
  );
  return row ? { device: fromRow(row), latest: prefixedCertificate(row) } : null;
}
export const findDeviceByName = (db: Db, name: string) => findBy(db, 'name', name);
export const findDeviceByFingerprint = (db: Db, fingerprint: string) => findBy(db, 'key_fingerprint', fingerprint);

/** The active device whose port block holds PORT (revoked devices keep their old block as history). */
export async function findActiveDeviceByPort(db: Db, port: number): Promise<DeviceRecord | null> {
  const row = await db.first<DeviceRow>(`SELECT * FROM devices WHERE status = 'active' AND port_first <= ? AND port_last >= ? LIMIT 1`, [port, port]);
  return row ? fromRow(row) : null;
}

/**
 * The keyset of each order: a column expression (never built from input) and the direction. name sorts
 * unnamed devices first (as ''); lastSeen puts the most recent first and never-seen devices last (as 0).
 */
const DEVICE_ORDERS = {
  created: { expr: 'created_at', dir: 'asc', shape: 'number' },
  name: { expr: "COALESCE(name, '')", dir: 'asc', shape: 'string' },
  lastSeen: { expr: 'COALESCE(last_seen_at, 0)', dir: 'desc', shape: 'number' },
} as const;

function orderKey(d: DeviceRecord, sort: keyof typeof DEVICE_ORDERS): number | string {
  if (sort === 'name') return d.name ?? '';
  if (sort === 'lastSeen') return d.lastSeenAt?.getTime() ?? 0;
  return d.createdAt.getTime();
}

export async function listDevices(db: Db, filter: DeviceFilter): Promise<Page<DeviceRecord>> {
  const limit = pageLimit(filter);
  const sort = filter.sort ?? 'created';
  const order = DEVICE_ORDERS[sort];
  const q = db
    .qb('devices')
    .select('*')
    .orderByRaw(`${order.expr} ${order.dir}, id ${order.dir}`)
    .limit(limit + 1);
  if (filter.status !== undefined) q.where({ status: filter.status });
  const postgres = isPostgres(db);
  if (filter.online !== undefined) q.where({ online: filter.online });
  if (filter.nameContains !== undefined) {
    // LIKE is case-insensitive for ASCII in SQLite; ILIKE does the same on PostgreSQL.
    q.whereRaw(`?? ${postgres ? 'ILIKE' : 'LIKE'} ? ESCAPE '\\'`, ['name', likeLiteral(filter.nameContains)]);
  }
  if (filter.label !== undefined) {
    // Key and value bound, never a JSON path built from user text; the
    // value must be a JSON string (labels are string to string).
    if (postgres) {
      q.whereRaw('(devices.labels::jsonb -> ?) = to_jsonb(?::text)', [filter.label.key, filter.label.value]);
    } else {
      q.whereRaw(
        'EXISTS (SELECT 1 FROM json_each(devices.labels) AS l WHERE l.key = ? AND l.type = ? AND l.value = ?)',
        [filter.label.key, 'text', filter.label.value],
      );
    }
  }
  if (filter.cursor) {
    const [key, id] = decodeCursor(filter.cursor, [order.shape, 'string']);
    const cmp = order.dir === 'asc' ? '>' : '<';
    q.whereRaw(`(${order.expr} ${cmp} ? OR (${order.expr} = ? AND id ${cmp} ?))`, [key!, key!, id!]);
  }
  const rows = await db.all<DeviceRow>(q);
  const items = rows.slice(0, limit).map(fromRow);
  const last = items[items.length - 1];
  return {
    items,
    nextCursor: rows.length > limit && last ? encodeCursor([orderKey(last, sort), last.id]) : null,
  };
}

/** Replaces the labels of device ID; false if there is no such device. */
export async function setDeviceLabels(db: Db, id: string, labels: Labels): Promise<boolean> {
  return (await db.run(db.qb('devices').update({ labels: JSON.stringify(labels) }).where({ id }))) === 1;
}

export async function markDeviceRevoked(db: Db, id: string, by: string, reason: string | null, now: Date): Promise<boolean> {
  const changed = await db.run(
    db.qb('devices').update({ status: 'revoked', revoked_at: toMillis(now), revoked_by: by, revoke_reason: reason }).where({ id, status: 'active' }),
  );
  return changed === 1;
}

export async function updateDeviceKey(db: Db, id: string, publicKey: string, fingerprint: string): Promise<boolean> {
  try {
    const changed = await db.run(
      db.qb('devices').update({ public_key: publicKey, key_fingerprint: fingerprint }).where({ id, status: 'active' }),
    );
    return changed === 1;
  } catch (err) {
    mapDeviceConflict(err);
  }
}

export async function setDeviceOnline(db: Db, id: string, p: DevicePresence): Promise<void> {
  const q = db
    .qb('devices')
    .update({
      online: p.online,
      connected_since: toMillisOrNull(p.since),
      remote_addr: p.remoteAddr,
      last_seen_at: toMillis(p.lastSeen),
      ...(p.node === undefined ? {} : { node_id: p.online ? p.node : null }),
    })
    .where({ id });
  // Offline from a node that no longer holds the device (taken over elsewhere): nothing to write.
  if (!p.online && p.node !== undefined && p.node !== null) q.where((w) => w.where('node_id', p.node!).orWhereNull('node_id'));
  await db.run(q);
}

export async function countDevicesByStatus(db: Db): Promise<DeviceCounts> {
  // One pass; SUM(CASE ...) is portable where FILTER (WHERE ...) is not everywhere.
  const row = await db.first<{ active: number | string; revoked: number | string; online: number | string }>(
    `SELECT COALESCE(SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END), 0) AS active,
            COALESCE(SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END), 0) AS revoked,
            COALESCE(SUM(CASE WHEN online THEN 1 ELSE 0 END), 0) AS online
     FROM devices`,
  );
  return { active: Number(row?.active ?? 0), revoked: Number(row?.revoked ?? 0), online: Number(row?.online ?? 0) };
}
