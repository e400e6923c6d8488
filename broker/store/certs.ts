/**
 * certificates, serial_counter and the KRL version in meta. Serials and KRL
 * versions are uint64 on the wire: they are bound as decimal strings and read
 * back through CAST(... AS TEXT), because node's sqlite3 turns INTEGERs into
 * doubles (exact only up to 2^53).
 */
import { BrokerError } from '../core/errors.js';
import { bindUint64, toDate, toDateOrNull, toMillis, toNumberOrNull, type Db } from './db.js';
import type { SerialBlock } from './serials.js';
import type { CertificateRecord, IssuedCertificateRecord, NewCertificate } from './types.js';

interface CertRow {
  serial: string;
  device_id: string | null;
  kind: 'device' | 'operator';
  key_fingerprint: string;
  key_id: string;
  principal: string;
  valid_after: number | string;
  valid_before: number | string;
  issued_at: number | string;
  revoked_at: number | string | null;
  signed_by: string | null;
  trust_rotation: number | string | null;
}

function certificateFromRow(row: CertRow): CertificateRecord {
  return {
    serial: BigInt(row.serial),
    deviceId: row.device_id,
    kind: row.kind,
    keyFingerprint: row.key_fingerprint,
    keyId: row.key_id,
    principal: row.principal,
    validAfter: toDate(row.valid_after),
    validBefore: toDate(row.valid_before),
    issuedAt: toDate(row.issued_at),
    revokedAt: toDateOrNull(row.revoked_at),
    signedBy: row.signed_by ?? null,
    trustRotation: toNumberOrNull(row.trust_rotation ?? null),
  };
}

/**
 * One UPDATE ... RETURNING: atomic under any number of writers (the row
 * lock / SQLite's write lock serializes them). The counter starts at 0, so
 * the first serial is 1 and 0 never comes out; the guard stops at 2^63-1,
 * where SQLite would silently turn the sum into a REAL.
 */
export async function nextSerial(db: Db): Promise<bigint> {
  const row = await db.first<{ value: string }>(
    `UPDATE serial_counter SET value = value + 1
     WHERE id = 1 AND value < 9223372036854775807
     RETURNING CAST(value AS TEXT) AS value`,
  );
  if (!row) throw new BrokerError('INTERNAL', 'store: certificate serials exhausted');
  return BigInt(row.value);
}

/**
 * Advances the counter by `count` in one statement and returns the serials
 * skipped over, for the process to hand out (serials.ts); null when fewer
 * than `count` remain (then nextSerial takes the last ones one by one).
 */
export async function reserveSerials(db: Db, count: number): Promise<SerialBlock | null> {
  const row = await db.first<{ value: string }>(
    `UPDATE serial_counter SET value = value + ?
     WHERE id = 1 AND value <= 9223372036854775807 - ?
     RETURNING CAST(value AS TEXT) AS value`,
    [count, count],
  );
  if (!row) return null;
  const last = BigInt(row.value);
  return { first: last - BigInt(count) + 1n, last };
}

/** Same pattern; meta.value is TEXT so that meta can hold any setting. */
export async function nextKrlVersion(db: Db): Promise<bigint> {
  const row = await db.first<{ value: string }>(
    `UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)
     WHERE key = ? RETURNING value`,
    ['krl_version'],
  );
  if (!row) throw new BrokerError('INTERNAL', 'store: krl_version missing');
  return BigInt(row.value);
}

const INSERT_SQL = `
  INSERT INTO certificates (serial, device_id, kind, key_fingerprint, key_id, principal, valid_after, valid_before, issued_at, signed_by, trust_rotation)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;

export async function insertCertificate(db: Db, c: NewCertificate): Promise<void> {
  await db.run(INSERT_SQL, [
    bindUint64(c.serial),
    c.deviceId,
    c.kind,
    c.keyFingerprint,
    c.keyId,
    c.principal,
    toMillis(c.validAfter),
    toMillis(c.validBefore),
    toMillis(c.issuedAt),
    c.signedBy ?? null,
    c.trustRotation ?? null,
  ]);
}

const SELECT_CERT = `
  SELECT CAST(serial AS TEXT) AS serial, device_id, kind, key_fingerprint, key_id, principal,
         valid_after, valid_before, issued_at, revoked_at, signed_by, trust_rotation
  FROM certificates`;

export async function findCertificate(db: Db, serial: bigint): Promise<CertificateRecord | null> {
  const row = await db.first<CertRow>(`${SELECT_CERT} WHERE serial = ?`, [bindUint64(serial)]);
  return row ? certificateFromRow(row) : null;
}

/** Serials grow with issuance, so the highest serial is the latest certificate. */
export async function latestCertificateOfDevice(db: Db, deviceId: string): Promise<CertificateRecord | null> {
  const row = await db.first<CertRow>(`${SELECT_CERT} WHERE device_id = ? AND kind = 'device' ORDER BY serial DESC LIMIT 1`, [deviceId]);
  return row ? certificateFromRow(row) : null;
}

/** The device-kind certificates of DEVICEID, newest first, at most LIMIT. */
export async function listCertificatesOfDevice(db: Db, deviceId: string, limit: number): Promise<CertificateRecord[]> {
  const rows = await db.all<CertRow>(`${SELECT_CERT} WHERE device_id = ? AND kind = 'device' ORDER BY serial DESC LIMIT ?`, [deviceId, limit]);
  return rows.map(certificateFromRow);
}

/** The latest device-kind certificate of each of DEVICEIDS (a page of the fleet), by device id; one statement. */
export async function latestCertificatesOfDevices(db: Db, deviceIds: readonly string[]): Promise<Map<string, CertificateRecord>> {
  const found = new Map<string, CertificateRecord>();
  if (deviceIds.length === 0) return found;
  const marks = deviceIds.map(() => '?').join(', ');
  const rows = await db.all<CertRow>(
    `${SELECT_CERT} WHERE serial IN (SELECT MAX(serial) FROM certificates WHERE kind = 'device' AND device_id IN (${marks}) GROUP BY device_id)`,
    [...deviceIds],
  );
  for (const row of rows) {
    const cert = certificateFromRow(row);
    if (cert.deviceId) found.set(cert.deviceId, cert);
  }
  return found;
}

/** The certificate columns, prefixed `cert_`, for a join with another table. */
const CERT_COLUMNS = ['device_id', 'kind', 'key_fingerprint', 'key_id', 'principal', 'valid_after', 'valid_before', 'issued_at', 'revoked_at', 'signed_by', 'trust_rotation'] as const;
export const PREFIXED_CERT_COLUMNS = [
  'CAST(c.serial AS TEXT) AS cert_serial',
  ...CERT_COLUMNS.map((col) => `c.${col} AS cert_${col}`),
].join(', ');

/** The certificate from a row with PREFIXED_CERT_COLUMNS; null when the join found none. */
export function prefixedCertificate(row: Record<string, unknown>): CertificateRecord | null {
  if (row.cert_serial === null || row.cert_serial === undefined) return null;
  const cert: Record<string, unknown> = { serial: row.cert_serial };
  for (const col of CERT_COLUMNS) cert[col] = row[`cert_${col}`];
  return certificateFromRow(cert as unknown as CertRow);
}

interface IssuedRow extends CertRow {
  d_id: string | null;
  d_status: 'active' | 'revoked' | null;
  d_port_first: number | string | null;
  d_port_last: number | string | null;
}

/** The largest serial the counter can hand out (nextSerial's guard); bindUint64 refuses anything above. */
const MAX_STORED_SERIAL = 0x7fffffffffffffffn;

/**
 * One statement, a primary-key lookup on certificates and one on devices:
 * EXPLAIN QUERY PLAN gives two SEARCHes by the primary keys' indexes, no
 * SCAN (test/broker/store/certs.test.ts checks it on this very text).
 */
export const FIND_ISSUED_SQL = `
  SELECT CAST(c.serial AS TEXT) AS serial, c.device_id, c.kind, c.key_fingerprint, c.key_id, c.principal,
         c.valid_after, c.valid_before, c.issued_at, c.revoked_at, c.signed_by, c.trust_rotation,
         d.id AS d_id, d.status AS d_status, d.port_first AS d_port_first, d.port_last AS d_port_last
  FROM certificates c
  LEFT JOIN devices d ON d.id = c.device_id
  WHERE c.serial = ?`;

/**
 * The certificate recorded under SERIAL and the device it names, as the
 * SSH gateway checks them at login (FIND_ISSUED_SQL). A serial the counter
 * can never have handed out (0, or above 2^63 - 1, as a forged certificate
 * may carry) is simply not there: null, without a query.
 */
export async function findIssuedCertificate(db: Db, serial: bigint): Promise<IssuedCertificateRecord | null> {
  if (serial <= 0n || serial > MAX_STORED_SERIAL) return null;
  const row = await db.first<IssuedRow>(FIND_ISSUED_SQL, [bindUint64(serial)]);
  if (!row) return null;
  const device =
    row.d_id === null || row.d_status === null
      ? null
      : { id: row.d_id, status: row.d_status, portFirst: toNumberOrNull(row.d_port_first), portLast: toNumberOrNull(row.d_port_last) };
  return { certificate: certificateFromRow(row), device };
}

export async function revokeCertificatesOfDevice(db: Db, deviceId: string, now: Date): Promise<number> {
  return db.run('UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL', [toMillis(now), deviceId]);
}

/** Revokes the device's unrevoked device certificates for one key (a rotated-away key); returns their serials. */
export async function revokeCertificatesOfKey(db: Db, deviceId: string, keyFingerprint: string, now: Date): Promise<bigint[]> {
  const rows = await db.all<{ serial: string }>(
    `UPDATE certificates SET revoked_at = ?
     WHERE device_id = ? AND kind = 'device' AND key_fingerprint = ? AND revoked_at IS NULL
     RETURNING CAST(serial AS TEXT) AS serial`,
    [toMillis(now), deviceId, keyFingerprint],
  );
  return rows.map((r) => BigInt(r.serial)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export async function listRevokedUnexpiredSerials(db: Db, now: Date): Promise<bigint[]> {
  const rows = await db.all<{ serial: string }>(
    'SELECT CAST(serial AS TEXT) AS serial FROM certificates WHERE revoked_at IS NOT NULL AND valid_before > ? ORDER BY serial',
    [toMillis(now)],
  );
  return rows.map((r) => BigInt(r.serial));
}

export async function listRevokedDeviceIds(db: Db): Promise<string[]> {
  const rows = await db.all<{ id: string }>(`SELECT id FROM devices WHERE status = 'revoked' ORDER BY id`);
  return rows.map((r) => r.id);
}

export async function isSerialRevoked(db: Db, serial: bigint): Promise<boolean> {
  const row = await db.first('SELECT 1 AS revoked FROM certificates WHERE serial = ? AND revoked_at IS NOT NULL', [bindUint64(serial)]);
  return row !== undefined;
}

/** Certificates expired before `expiredBefore` matter neither to the KRL nor to quarantine. */
export async function pruneCertificates(db: Db, expiredBefore: Date): Promise<number> {
  return db.run('DELETE FROM certificates WHERE valid_before < ?', [toMillis(expiredBefore)]);
}
