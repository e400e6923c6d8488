/**
 * OpenSSH key revocation lists (PROTOCOL.krl), the file sshd reads through
 * `RevokedKeys`. We only encode: sshd and `ssh-keygen -Q` are the readers.
 *
 * sshd refuses every key when that file is missing or does not parse, so
 * everything that would make OpenSSH reject the KRL (serial 0, NUL bytes in
 * a string, a number outside uint64) is refused here with KRL_INVALID before
 * a byte is written.
 */
import { createHash } from 'node:crypto';
import { writeFileAtomic } from './atomic-file.js';
import { CaError } from './errors.js';
import { publicKeyBlob, type PublicKey } from './keys.js';
import { SshWriter } from './wire.js';

export interface KrlInput {
  /** Raw Ed25519 CA public key the revoked certificates were signed by. */
  readonly caKey: PublicKey;
  /**
   * More CAs whose certificates the same serials and key ids revoke, each in
   * a certificate section of its own (a user CA rotation: certificates of
   * both CAs are accepted, so both must be revocable).
   */
  readonly moreCaKeys?: readonly PublicKey[];
  /** Revoked certificate serials (1 .. 2^64-1). */
  readonly serials?: Iterable<bigint>;
  /** Revoked certificate key ids. */
  readonly keyIds?: Iterable<string>;
  /** Plain keys revoked outright, whether used bare or inside any certificate. */
  readonly revokedKeys?: Iterable<PublicKey>;
  /** krl_version: monotonic, chosen by the caller. */
  readonly version: bigint;
  readonly generatedAt: Date;
  readonly comment?: string;
}

// PROTOCOL.krl section 1: "SSHKRL\n\0" as a uint64, then format version 1.
const KRL_MAGIC = Buffer.from('SSHKRL\n\0', 'latin1');
const KRL_FORMAT_VERSION = 1;

// PROTOCOL.krl section 1, section types.
const KRL_SECTION_CERTIFICATES = 1;
const KRL_SECTION_FINGERPRINT_SHA256 = 5;

// PROTOCOL.krl section 2, certificate subsection types.
const KRL_SECTION_CERT_SERIAL_LIST = 0x20;
const KRL_SECTION_CERT_SERIAL_RANGE = 0x21;
const KRL_SECTION_CERT_KEY_ID = 0x23;

const UINT64_MAX = (1n << 64n) - 1n;

/**
 * A range subsection costs 21 bytes (type, length, two uint64) against 8
 * bytes per serial in the shared list subsection, so runs of three or more
 * become ranges and shorter runs stay in the list.
 */
const MIN_RANGE_RUN = 3n;

interface SerialPlan {
  readonly singles: bigint[];
  readonly ranges: Array<readonly [bigint, bigint]>;
}

function invalid(message: string): CaError {
  return new CaError('KRL_INVALID', message);
}

function assertUint64(value: bigint, what: string): void {
  if (typeof value !== 'bigint' || value < 0n || value > UINT64_MAX) {
    throw invalid(`${what} must be a bigint between 0 and 2^64-1`);
  }
}

// OpenSSH reads the comment and key ids with sshbuf_get_cstring, which
// rejects an embedded NUL: the whole KRL would fail to load.
function assertCString(value: string, what: string): void {
  if (typeof value !== 'string' || value.includes('\0')) {
    throw invalid(`${what} must be a string without NUL characters`);
  }
}

function assertRawKey(key: PublicKey, what: string): void {
  if (!Buffer.isBuffer(key) || key.length !== 32) {
    throw invalid(`${what} must be a raw 32-byte Ed25519 public key`);
  }
}

/** Sorts and dedupes serials, then splits them into list entries and ranges. */
export function planSerials(serials: Iterable<bigint>): SerialPlan {
  const unique = new Set<bigint>();
  for (const serial of serials) {
    assertUint64(serial, 'a revoked serial');
    // A zero serial makes OpenSSH's parser refuse the KRL (and zero means
    // "no serial" in a certificate, so it could never match anyway).
    if (serial === 0n) throw invalid('serial 0 cannot be revoked');
    unique.add(serial);
  }
  const sorted = [...unique].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const plan: SerialPlan = { singles: [], ranges: [] };
  let i = 0;
  while (i < sorted.length) {
    const lo = sorted[i]!;
    let hi = lo;
    while (i + 1 < sorted.length && sorted[i + 1] === hi + 1n) hi = sorted[++i]!;
    i++;
    if (hi - lo + 1n >= MIN_RANGE_RUN) {
      plan.ranges.push([lo, hi]);
    } else {
      for (let s = lo; s <= hi; s++) plan.singles.push(s);
    }
  }
  return plan;
}

function sortedKeyIds(keyIds: Iterable<string>): string[] {
  const unique = new Set<string>();
  for (const id of keyIds) {
    assertCString(id, 'a revoked key id');
    // An empty id would revoke every certificate issued without one: far
    // more likely a caller bug than intent.
    if (id === '') throw invalid('an empty key id cannot be revoked');
    unique.add(id);
  }
  return [...unique].sort();
}

/** PROTOCOL.krl section 2: the certificate section for one CA, or null when nothing is revoked. */
function certificateSection(caKey: PublicKey, plan: SerialPlan, keyIds: string[]): Buffer | null {
  if (plan.singles.length === 0 && plan.ranges.length === 0 && keyIds.length === 0) return null;
  const section = new SshWriter()
    .string(publicKeyBlob(caKey))
    .string(Buffer.alloc(0)); // reserved
  if (plan.singles.length > 0) {
    // Section 2.1: a bare sequence of uint64 serials.
    const list = new SshWriter();
    for (const serial of plan.singles) list.uint64(serial);
    section.byte(KRL_SECTION_CERT_SERIAL_LIST).string(list.toBuffer());
  }
  for (const [lo, hi] of plan.ranges) {
    // Section 2.2: serial_min <= serial <= serial_max, both inclusive.
    section.byte(KRL_SECTION_CERT_SERIAL_RANGE).string(new SshWriter().uint64(lo).uint64(hi).toBuffer());
  }
  if (keyIds.length > 0) {
    // Section 2.4: "must contain at least one key_id".
    const ids = new SshWriter();
    for (const id of keyIds) ids.string(id);
    section.byte(KRL_SECTION_CERT_KEY_ID).string(ids.toBuffer());
  }
  return section.toBuffer();
}

/**
 * PROTOCOL.krl section 4: SHA256 of each plain key blob, "in numeric order,
 * treating each hash as a big-endian integer". This is what `ssh-keygen -k`
 * itself writes for a plain key, and it matches the key whether presented
 * bare or as the subject of a certificate.
 */
function fingerprintSection(keys: Iterable<PublicKey>): Buffer | null {
  const hashes = new Map<string, Buffer>();
  for (const key of keys) {
    assertRawKey(key, 'a revoked key');
    const hash = createHash('sha256').update(publicKeyBlob(key)).digest();
    hashes.set(hash.toString('hex'), hash);
  }
  if (hashes.size === 0) return null;
  // Equal-length buffers: byte order is big-endian numeric order.
  const sorted = [...hashes.values()].sort(Buffer.compare);
  const section = new SshWriter();
  for (const hash of sorted) section.string(hash);
  return section.toBuffer();
}

/** Encodes a KRL. There is never a signature section (OpenSSH >= 9.4 refuses them). */
export function encodeKrl(input: KrlInput): Buffer {
  assertRawKey(input.caKey, 'the CA key');
  assertUint64(input.version, 'the KRL version');
  const millis = input.generatedAt instanceof Date ? input.generatedAt.getTime() : Number.NaN;
  if (!Number.isFinite(millis) || millis < 0) throw invalid('generatedAt must be a valid date after 1970');
  const comment = input.comment ?? '';
  assertCString(comment, 'the KRL comment');

  const plan = planSerials(input.serials ?? []);
  const keyIds = sortedKeyIds(input.keyIds ?? []);
  const caKeys = [input.caKey];
  for (const key of input.moreCaKeys ?? []) {
    assertRawKey(key, 'a CA key');
    if (!caKeys.some((k) => k.equals(key))) caKeys.push(key);
  }
  const certs = caKeys.map((key) => certificateSection(key, plan, keyIds));
  const hashes = fingerprintSection(input.revokedKeys ?? []);

  // Section 1 header. An empty KRL is just this header: zero sections is
  // valid and is what the broker writes at init.
  const out = new SshWriter()
    .raw(KRL_MAGIC)
    .uint32(KRL_FORMAT_VERSION)
    .uint64(input.version)
    .uint64(BigInt(Math.floor(millis / 1000)))
    .uint64(0n) // flags: none defined
    .string(Buffer.alloc(0)) // reserved
    .string(comment);
  for (const section of certs) if (section) out.byte(KRL_SECTION_CERTIFICATES).string(section);
  if (hashes) out.byte(KRL_SECTION_FINGERPRINT_SHA256).string(hashes);
  return out.toBuffer();
}

/**
 * Writes the KRL atomically with mode 0644 (it holds no secrets, and sshd
 * and ssh-keygen must be able to read it): sshd refuses every key if it
 * ever sees a torn or missing RevokedKeys file.
 */
export async function writeKrl(path: string, input: KrlInput): Promise<void> {
  const data = encodeKrl(input); // validate before touching the file
  await writeFileAtomic(path, data, { mode: 0o644 });
}
