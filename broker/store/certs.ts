/**
 * certificates, serial_counter and the KRL version in meta. Serials and KRL
 * versions are uint64 on the wire: they are bound as decimal strings and read
 * back through CAST(... AS TEXT), because node's sqlite3 turns INTEGERs into
 * doubles (exact only up to 2^53).
 */
import { BrokerError } from '../errors.js';
import { bindUint64, rawRows, toDate, toDateOrNull, toMillis, type Db } from './db.js';
import type { CertificateRecord, NewCertificate } from './types.js';

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
}

function fromRow(row: CertRow): CertificateRecord {
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
  };
}

/**
 * One UPDATE ... RETURNING: atomic under any number of writers (the row
 * lock / SQLite's write lock serializes them). The counter starts at 0, so
 * the first serial is 1 and 0 never comes out; the guard stops at 2^63-1,
 * where SQLite would silently turn the sum into a REAL.
 */
export async function nextSerial(db: Db): Promise<bigint> {
  const rows = await rawRows<{ value: string }>(
    db,
    `UPDATE serial_counter SET value = value + 1
     WHERE id = 1 AND value < 9223372036854775807
     RETURNING CAST(value AS TEXT) AS value`,
    [],
  );
  if (!rows[0]) throw new BrokerError('INTERNAL', 'store: certificate serials exhausted');
  return BigInt(rows[0].value);
}

/** Same pattern; meta.value is TEXT so that meta can hold any setting. */
export async function nextKrlVersion(db: Db): Promise<bigint> {
  const rows = await rawRows<{ value: string }>(
    db,
    `UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)
     WHERE key = ? RETURNING value`,
    ['krl_version'],
  );
  if (!rows[0]) throw new BrokerError('INTERNAL', 'store: krl_version missing');
  return BigInt(rows[0].value);
}

export async function insertCertificate(db: Db, c: NewCertificate): Promise<void> {
  await db('certificates').insert({
    serial: bindUint64(c.serial),
    device_id: c.deviceId,
    kind: c.kind,
    key_fingerprint: c.keyFingerprint,
    key_id: c.keyId,
    principal: c.principal,
    valid_after: toMillis(c.validAfter),
    valid_before: toMillis(c.validBefore),
    issued_at: toMillis(c.issuedAt),
  });
}

const CERT_COLUMNS = [
  'device_id',
  'kind',
  'key_fingerprint',
  'key_id',
  'principal',
  'valid_after',
  'valid_before',
  'issued_at',
  'revoked_at',
];

export async function findCertificate(db: Db, serial: bigint): Promise<CertificateRecord | null> {
  const row = (await db('certificates')
    .select(db.raw('CAST(serial AS TEXT) AS serial'), ...CERT_COLUMNS)
    .where('serial', bindUint64(serial))
    .first()) as CertRow | undefined;
  return row ? fromRow(row) : null;
}

/** Serials grow with issuance, so the highest serial is the latest certificate. */
export async function latestCertificateOfDevice(db: Db, deviceId: string): Promise<CertificateRecord | null> {
  const row = (await db('certificates')
    .select(db.raw('CAST(serial AS TEXT) AS serial'), ...CERT_COLUMNS)
    .where({ device_id: deviceId, kind: 'device' })
    .orderBy('serial', 'desc')
    .first()) as CertRow | undefined;
  return row ? fromRow(row) : null;
}

export async function revokeCertificatesOfDevice(db: Db, deviceId: string, now: Date): Promise<number> {
  return db('certificates').update({ revoked_at: toMillis(now) }).where({ device_id: deviceId }).whereNull('revoked_at');
}

export async function listRevokedUnexpiredSerials(db: Db, now: Date): Promise<bigint[]> {
  const rows = (await db('certificates')
    .select(db.raw('CAST(serial AS TEXT) AS serial'))
    .whereNotNull('revoked_at')
    .where('valid_before', '>', toMillis(now))
    .orderBy('serial', 'asc')) as { serial: string }[];
  return rows.map((r) => BigInt(r.serial));
}

export async function listRevokedDeviceIds(db: Db): Promise<string[]> {
  const rows = (await db('devices').select('id').where({ status: 'revoked' }).orderBy('id')) as { id: string }[];
  return rows.map((r) => r.id);
}

export async function isSerialRevoked(db: Db, serial: bigint): Promise<boolean> {
  const row: unknown = await db('certificates').select('revoked_at').where('serial', bindUint64(serial)).whereNotNull('revoked_at').first();
  return row !== undefined;
}

/** Certificates expired before `expiredBefore` matter neither to the KRL nor to quarantine. */
export async function pruneCertificates(db: Db, expiredBefore: Date): Promise<number> {
  return db('certificates').where('valid_before', '<', toMillis(expiredBefore)).del();
}
