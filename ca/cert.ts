/**
 * OpenSSH certificates (PROTOCOL.certkeys), Ed25519 only: encode, sign,
 * parse and verify. The CA signature is checked here with node:crypto —
 * sshpk's Certificate.isSignedByKey() only compares fingerprints.
 */
import { randomBytes } from 'node:crypto';
import { CaError } from './errors.js';
import { ED25519, parsePublicKeyBlob, publicKeyBlob, signBytes, verifyBytes, type KeyPair, type PublicKey } from './keys.js';
import { SshReader, SshWriter } from './wire.js';

export const ED25519_CERT = 'ssh-ed25519-cert-v01@openssh.com';
/** PROTOCOL.certkeys: valid_before of 0xffffffffffffffff means "forever". */
export const FOREVER = 0xffff_ffff_ffff_ffffn;

export type CertType = 'user' | 'host';
const TYPE_CODES: Record<CertType, number> = { user: 1, host: 2 };

export interface CertificateFields {
  readonly type: CertType;
  readonly publicKey: PublicKey;
  readonly serial: bigint;
  readonly keyId: string;
  readonly principals: readonly string[];
  /** Seconds since the epoch. */
  readonly validAfter: bigint;
  /** Seconds since the epoch; FOREVER for no expiry. */
  readonly validBefore: bigint;
  readonly criticalOptions: Readonly<Record<string, string>>;
  readonly extensions: Readonly<Record<string, string>>;
  /** 32 random bytes unless given (tests pin it for golden output). */
  readonly nonce?: Buffer;
}

export interface Certificate extends CertificateFields {
  readonly nonce: Buffer;
  readonly signatureKey: PublicKey;
  readonly signature: Buffer;
  /** The whole certificate blob, as it appears base64-encoded in a -cert.pub file. */
  readonly blob: Buffer;
  /** The bytes the CA signed: everything up to, not including, the signature. */
  readonly signedData: Buffer;
}

const EMPTY = Buffer.alloc(0);

// Nonces come from a pooled buffer: one randomBytes call per 128 certificates
// instead of one each (the CA's throughput is bounded by Ed25519 signing, and
// a syscall-sized call per certificate costs several percent of it).
let noncePool = EMPTY;
let nonceOffset = 0;
function nextNonce(): Buffer {
  if (nonceOffset + 32 > noncePool.length) {
    noncePool = randomBytes(32 * 128);
    nonceOffset = 0;
  }
  const nonce = noncePool.subarray(nonceOffset, nonceOffset + 32);
  nonceOffset += 32;
  return nonce;
}

const caKeyBlobs = new WeakMap<PublicKey, Buffer>();
function caKeyBlob(key: PublicKey): Buffer {
  let blob = caKeyBlobs.get(key);
  if (!blob) {
    blob = publicKeyBlob(key);
    caKeyBlobs.set(key, blob);
  }
  return blob;
}

/** Options and extensions are a packed list sorted by name; values are themselves strings (empty for flags). */
function encodeOptions(options: Readonly<Record<string, string>>): Buffer {
  const names = Object.keys(options);
  if (names.length === 0) return EMPTY;
  const writer = new SshWriter();
  for (const name of names.sort()) {
    const value = options[name]!;
    writer.string(name).string(value === '' ? Buffer.alloc(0) : new SshWriter().string(value).toBuffer());
  }
  return writer.toBuffer();
}

function decodeOptions(buf: Buffer, what: string): Record<string, string> {
  const reader = new SshReader(buf, what);
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  let previous: string | undefined;
  while (reader.remaining > 0) {
    const name = reader.text();
    const data = reader.string();
    if (name in out) throw new CaError('CERT_MALFORMED', `${what} repeats "${name}"`);
    if (previous !== undefined && name < previous) throw new CaError('CERT_MALFORMED', `${what} are not sorted`);
    previous = name;
    if (data.length === 0) {
      out[name] = '';
    } else {
      const inner = new SshReader(data, what);
      out[name] = inner.text();
      inner.end();
    }
  }
  return out;
}

function encodePrincipals(principals: readonly string[]): Buffer {
  const writer = new SshWriter();
  for (const p of principals) writer.string(p);
  return writer.toBuffer();
}

function decodePrincipals(buf: Buffer): string[] {
  const reader = new SshReader(buf, 'principals');
  const out: string[] = [];
  while (reader.remaining > 0) out.push(reader.text());
  return out;
}

function encodeSignedPart(fields: CertificateFields, nonce: Buffer, signatureKey: PublicKey): Buffer {
  return new SshWriter()
    .string(ED25519_CERT)
    .string(nonce)
    .string(fields.publicKey)
    .uint64(fields.serial)
    .uint32(TYPE_CODES[fields.type])
    .string(fields.keyId)
    .string(encodePrincipals(fields.principals))
    .uint64(fields.validAfter)
    .uint64(fields.validBefore)
    .string(encodeOptions(fields.criticalOptions))
    .string(encodeOptions(fields.extensions))
    .string(EMPTY) // reserved
    .string(caKeyBlob(signatureKey))
    .toBuffer();
}

/** Signs a certificate with an Ed25519 CA key. Callers normally use a profile (profiles.ts). */
export function signCertificate(fields: CertificateFields, ca: KeyPair): Certificate {
  if (fields.publicKey.length !== 32) throw new CaError('KEY_INVALID', 'certified key must be a 32-byte Ed25519 key');
  const nonce = fields.nonce ?? nextNonce();
  const signedData = encodeSignedPart(fields, nonce, ca.publicKey);
  const rawSignature = signBytes(ca.privateKey, signedData);
  const signature = new SshWriter().string(ED25519).string(rawSignature).toBuffer();
  const blob = new SshWriter().raw(signedData).string(signature).toBuffer();
  return { ...fields, nonce, signatureKey: ca.publicKey, signature, blob, signedData };
}

/** Parses a certificate blob. Structure only: verifyCertificate() decides whether to trust it. */
export function parseCertificate(blob: Buffer): Certificate {
  try {
    return parseCertificateStrict(blob);
  } catch (err) {
    if (err instanceof CaError && (err.code === 'WIRE_MALFORMED' || err.code === 'KEY_INVALID')) {
      throw new CaError('CERT_MALFORMED', `certificate is malformed: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

function parseCertificateStrict(blob: Buffer): Certificate {
  const reader = new SshReader(blob, 'certificate');
  const algorithm = reader.text();
  if (algorithm !== ED25519_CERT) {
    if (algorithm.endsWith('-cert-v01@openssh.com')) {
      throw new CaError('CERT_UNSUPPORTED', 'only Ed25519 certificates are supported');
    }
    throw new CaError('CERT_MALFORMED', 'not an OpenSSH certificate');
  }
  const nonce = Buffer.from(reader.string());
  const publicKey = Buffer.from(reader.string());
  if (publicKey.length !== 32) throw new CaError('CERT_MALFORMED', 'certified key is not 32 bytes');
  const serial = reader.uint64();
  const typeCode = reader.uint32();
  const type = typeCode === 1 ? 'user' : typeCode === 2 ? 'host' : undefined;
  if (!type) throw new CaError('CERT_MALFORMED', 'certificate type is neither user nor host');
  const keyId = reader.text();
  const principals = decodePrincipals(reader.string());
  const validAfter = reader.uint64();
  const validBefore = reader.uint64();
  const criticalOptions = decodeOptions(reader.string(), 'critical options');
  const extensions = decodeOptions(reader.string(), 'extensions');
  reader.string(); // reserved: ignored, as PROTOCOL.certkeys says
  const signatureKeyBlob = reader.string();
  const signedLength = reader.position;
  const signature = Buffer.from(reader.string());
  reader.end();
  let signatureKey: PublicKey;
  try {
    signatureKey = parsePublicKeyBlob(signatureKeyBlob);
  } catch (err) {
    if (err instanceof CaError && err.code === 'KEY_UNSUPPORTED') {
      throw new CaError('CERT_UNSUPPORTED', 'the certificate is signed by a non-Ed25519 CA key', { cause: err });
    }
    throw err;
  }
  const copy = Buffer.from(blob);
  return {
    type, nonce, publicKey, serial, keyId, principals, validAfter, validBefore,
    criticalOptions, extensions, signatureKey, signature,
    blob: copy,
    signedData: copy.subarray(0, signedLength),
  };
}

/** Parses "ssh-ed25519-cert-v01@openssh.com AAAA… comment". */
export function parseCertificateLine(text: string): Certificate {
  const [algorithm, base64] = text.trim().split(/\s+/);
  if (!algorithm || !base64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) {
    throw new CaError('CERT_MALFORMED', 'not an OpenSSH certificate line');
  }
  const cert = parseCertificate(Buffer.from(base64, 'base64'));
  if (algorithm !== ED25519_CERT) throw new CaError('CERT_MALFORMED', 'certificate line names another algorithm');
  return cert;
}

export function formatCertificate(cert: Certificate, comment?: string): string {
  const line = `${ED25519_CERT} ${cert.blob.toString('base64')}`;
  return comment ? `${line} ${comment}` : line;
}

export interface VerifyOptions {
  /** CA public keys trusted for this purpose (user CA for devices, host CA for the broker). */
  readonly trustedCaKeys: readonly PublicKey[];
  readonly type: CertType;
  /** When to judge validity; seconds since the epoch or a Date. */
  readonly now: Date | number;
  /** If given, must be one of the certificate's principals. */
  readonly principal?: string;
  /**
   * Critical options the caller enforces. Any other critical option makes the
   * certificate invalid (PROTOCOL.certkeys: unrecognised critical options
   * must cause the certificate to be refused). Default: none.
   */
  readonly supportedCriticalOptions?: readonly string[];
}

function extractEd25519Signature(signature: Buffer): Buffer {
  const reader = new SshReader(signature, 'certificate signature');
  let algorithm: string;
  let raw: Buffer;
  try {
    algorithm = reader.text();
    raw = reader.string();
    reader.end();
  } catch (err) {
    throw new CaError('CERT_BAD_SIGNATURE', 'certificate signature is malformed', { cause: err });
  }
  if (algorithm !== ED25519 || raw.length !== 64) {
    throw new CaError('CERT_BAD_SIGNATURE', 'certificate signature is not an Ed25519 signature');
  }
  return raw;
}

function toSeconds(now: Date | number): bigint {
  return BigInt(Math.floor(typeof now === 'number' ? now : now.getTime() / 1000));
}

/**
 * Verifies a parsed certificate; throws a CaError whose code names the first
 * failure: CERT_UNKNOWN_CA, CERT_BAD_SIGNATURE, CERT_WRONG_TYPE,
 * CERT_NOT_YET_VALID, CERT_EXPIRED, CERT_UNKNOWN_CRITICAL_OPTION,
 * CERT_PRINCIPAL_MISMATCH. The signature is checked before anything the
 * signature protects is believed.
 */
export function verifyCertificate(cert: Certificate, options: VerifyOptions): void {
  if (!options.trustedCaKeys.some((key) => key.equals(cert.signatureKey))) {
    throw new CaError('CERT_UNKNOWN_CA', 'certificate is not signed by a trusted CA');
  }
  if (!verifyBytes(cert.signatureKey, cert.signedData, extractEd25519Signature(cert.signature))) {
    throw new CaError('CERT_BAD_SIGNATURE', 'certificate signature does not verify');
  }
  if (cert.type !== options.type) {
    throw new CaError('CERT_WRONG_TYPE', `a ${cert.type} certificate was given where a ${options.type} certificate is required`);
  }
  const now = toSeconds(options.now);
  if (now < cert.validAfter) throw new CaError('CERT_NOT_YET_VALID', 'certificate is not yet valid');
  if (now >= cert.validBefore) throw new CaError('CERT_EXPIRED', 'certificate has expired');
  const supported = options.supportedCriticalOptions ?? [];
  for (const name of Object.keys(cert.criticalOptions)) {
    if (!supported.includes(name)) {
      throw new CaError('CERT_UNKNOWN_CRITICAL_OPTION', `certificate carries critical option "${name}" that is not supported here`);
    }
  }
  if (options.principal !== undefined && !cert.principals.includes(options.principal)) {
    throw new CaError('CERT_PRINCIPAL_MISMATCH', 'certificate does not name the required principal');
  }
}
