/**
 * OpenSSH detached signatures (PROTOCOL.sshsig), as made and checked by
 * `ssh-keygen -Y sign` / `-Y verify`. Ed25519 only; signing and verifying
 * go through node:crypto.
 *
 * Error codes:
 *   SSHSIG_MALFORMED          armor, base64 or blob does not parse, or has trailing bytes
 *   SSHSIG_UNSUPPORTED        version > 1, a key or signature algorithm other than
 *                             ssh-ed25519, a hash other than sha256/sha512
 *   SSHSIG_NAMESPACE_MISMATCH the blob names another namespace than the verifier expects
 *   SSHSIG_WRONG_KEY          a valid-looking signature by a key other than expectedKey
 *   SSHSIG_BAD_SIGNATURE      the Ed25519 signature does not verify
 */
import { createHash } from 'node:crypto';
import { CaError } from './errors.js';
import { ED25519, parsePublicKeyBlob, publicKeyBlob, signBytes, verifyBytes, type KeyPair, type PublicKey } from './keys.js';
import { SshReader, SshWriter } from './wire.js';

export const SSHSIG_HASHES = ['sha512', 'sha256'] as const;
export type SshsigHash = (typeof SSHSIG_HASHES)[number];

// PROTOCOL.sshsig section 2.
const MAGIC_PREAMBLE = Buffer.from('SSHSIG', 'latin1');
const SIG_VERSION = 1;
// PROTOCOL.sshsig section 1.
const BEGIN = '-----BEGIN SSH SIGNATURE-----';
const END = '-----END SSH SIGNATURE-----';
// ssh-keygen wraps at 70 columns (the spec only says SHOULD, at 76).
const LINE_WIDTH = 70;
const ED25519_SIGNATURE_LENGTH = 64;

export interface SshsigVerified {
  readonly publicKey: PublicKey;
  readonly namespace: string;
  readonly hash: SshsigHash;
}

export interface ParsedSshsig extends SshsigVerified {
  /** The reserved field, which the spec says verifiers ignore. */
  readonly reserved: Buffer;
  /** The raw 64-byte Ed25519 signature. */
  readonly signature: Buffer;
}

function malformed(message: string): CaError {
  return new CaError('SSHSIG_MALFORMED', message);
}

function isSshsigHash(value: string): value is SshsigHash {
  return (SSHSIG_HASHES as readonly string[]).includes(value);
}

function assertNamespace(namespace: string): void {
  // PROTOCOL.sshsig section 2: "The namespace value MUST NOT be the empty string."
  if (typeof namespace !== 'string' || namespace === '') {
    throw new CaError('SSHSIG_NAMESPACE_MISMATCH', 'the SSHSIG namespace must not be empty');
  }
}

function toBytes(message: Buffer | string): Buffer {
  return typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
}

/**
 * PROTOCOL.sshsig section 3: what the key actually signs. The reserved field
 * is always empty here, as ssh-keygen builds it: a blob's non-empty reserved
 * field is ignored, not signed.
 */
function signedData(namespace: string, hash: SshsigHash, message: Buffer): Buffer {
  return new SshWriter()
    .raw(MAGIC_PREAMBLE)
    .string(namespace)
    .string(Buffer.alloc(0))
    .string(hash)
    .string(createHash(hash).update(message).digest())
    .toBuffer();
}

/** Signs MESSAGE in NAMESPACE; returns the armored text ssh-keygen writes, with a final newline. */
export function signSshsig(
  message: Buffer | string,
  pair: KeyPair,
  namespace: string,
  hash: SshsigHash = 'sha512',
): string {
  assertNamespace(namespace);
  if (!isSshsigHash(hash)) throw new CaError('SSHSIG_UNSUPPORTED', 'SSHSIG hash must be sha256 or sha512');
  const signature = signBytes(pair.privateKey, signedData(namespace, hash, toBytes(message)));
  const blob = new SshWriter()
    .raw(MAGIC_PREAMBLE)
    .uint32(SIG_VERSION)
    .string(publicKeyBlob(pair.publicKey))
    .string(namespace)
    .string(Buffer.alloc(0)) // reserved
    .string(hash)
    .string(new SshWriter().string(ED25519).string(signature).toBuffer())
    .toBuffer();
  const base64 = blob.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < base64.length; i += LINE_WIDTH) lines.push(base64.slice(i, i + LINE_WIDTH));
  return `${BEGIN}\n${lines.join('\n')}\n${END}\n`;
}

/**
 * PROTOCOL.sshsig section 1: the text must start with the header and end
 * with the footer (trailing line breaks allowed); between them only base64
 * lines. Node's base64 decoder skips junk silently, so the alphabet and
 * padding are checked first.
 */
function dearmor(armored: string | Buffer): Buffer {
  const text = typeof armored === 'string' ? armored : armored.toString('latin1');
  const lines = text.replace(/(\r?\n)+$/, '').split(/\r?\n/);
  if (lines.length < 3 || lines[0] !== BEGIN || lines[lines.length - 1] !== END) {
    throw malformed('not an armored SSH signature');
  }
  const base64 = lines.slice(1, -1).join('');
  if (base64.length === 0 || base64.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) {
    throw malformed('the SSH signature armor is not valid base64');
  }
  const blob = Buffer.from(base64, 'base64');
  if (blob.toString('base64') !== base64) throw malformed('the SSH signature armor is not canonical base64');
  return blob;
}

function readString(reader: SshReader, what: string): Buffer {
  try {
    return reader.string();
  } catch {
    throw malformed(`the SSH signature is truncated in its ${what}`);
  }
}

function readText(reader: SshReader, what: string): string {
  try {
    return reader.text();
  } catch {
    throw malformed(`the SSH signature ${what} is truncated or not UTF-8`);
  }
}

function parseEd25519PublicKey(blob: Buffer): PublicKey {
  const algorithm = readText(new SshReader(blob, 'SSHSIG public key'), 'public key algorithm');
  if (algorithm !== ED25519) throw new CaError('SSHSIG_UNSUPPORTED', 'only ssh-ed25519 SSH signatures are accepted');
  try {
    return parsePublicKeyBlob(blob);
  } catch {
    throw malformed('the SSH signature public key is malformed');
  }
}

/** Section 2 signature field: string "ssh-ed25519", string 64 bytes, nothing after. */
function parseEd25519Signature(blob: Buffer): Buffer {
  const reader = new SshReader(blob, 'SSHSIG signature');
  const algorithm = readText(reader, 'signature algorithm');
  if (algorithm !== ED25519) throw new CaError('SSHSIG_UNSUPPORTED', 'only ssh-ed25519 SSH signatures are accepted');
  const signature = readString(reader, 'signature');
  if (signature.length !== ED25519_SIGNATURE_LENGTH || reader.remaining !== 0) {
    throw malformed('the Ed25519 signature must be exactly 64 bytes');
  }
  return Buffer.from(signature);
}

/** Parses an armored SSHSIG without checking the signature. */
export function parseSshsig(armored: string | Buffer): ParsedSshsig {
  const reader = new SshReader(dearmor(armored), 'SSH signature');
  const magic = reader.remaining >= MAGIC_PREAMBLE.length ? reader.raw(MAGIC_PREAMBLE.length) : Buffer.alloc(0);
  if (!magic.equals(MAGIC_PREAMBLE)) throw malformed('the SSH signature lacks the SSHSIG preamble');
  if (reader.remaining < 4) throw malformed('the SSH signature is truncated in its version');
  const version = reader.uint32();
  // Section 2: "Verifiers MUST reject signatures with versions greater than those they support."
  if (version !== SIG_VERSION) throw new CaError('SSHSIG_UNSUPPORTED', `SSH signature version ${version} is not supported`);
  const keyBlob = readString(reader, 'public key');
  const namespace = readText(reader, 'namespace');
  const reserved = Buffer.from(readString(reader, 'reserved field'));
  const hash = readText(reader, 'hash algorithm');
  const signatureBlob = readString(reader, 'signature');
  if (reader.remaining !== 0) throw malformed('the SSH signature has trailing bytes');
  if (namespace === '') throw malformed('the SSH signature has an empty namespace');
  const publicKey = parseEd25519PublicKey(keyBlob);
  if (!isSshsigHash(hash)) throw new CaError('SSHSIG_UNSUPPORTED', 'SSH signature hash must be sha256 or sha512');
  const signature = parseEd25519Signature(signatureBlob);
  return { publicKey, namespace, hash, reserved, signature };
}

/**
 * Verifies an armored SSHSIG over MESSAGE in NAMESPACE and returns the
 * signer. With EXPECTEDKEY, a signature by any other key is SSHSIG_WRONG_KEY
 * (checked before the signature, which would prove nothing useful).
 */
export function verifySshsig(
  armored: string | Buffer,
  message: Buffer | string,
  namespace: string,
  expectedKey?: PublicKey,
): SshsigVerified {
  assertNamespace(namespace);
  const parsed = parseSshsig(armored);
  if (parsed.namespace !== namespace) {
    throw new CaError('SSHSIG_NAMESPACE_MISMATCH', 'the SSH signature was made for another namespace');
  }
  if (expectedKey !== undefined && !parsed.publicKey.equals(expectedKey)) {
    throw new CaError('SSHSIG_WRONG_KEY', 'the SSH signature was made by another key');
  }
  if (!verifyBytes(parsed.publicKey, signedData(namespace, parsed.hash, toBytes(message)), parsed.signature)) {
    throw new CaError('SSHSIG_BAD_SIGNATURE', 'the SSH signature does not verify');
  }
  return { publicKey: parsed.publicKey, namespace: parsed.namespace, hash: parsed.hash };
}
