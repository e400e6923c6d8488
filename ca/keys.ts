/**
 * Ed25519 key material in OpenSSH formats. Signing and verifying use
 * node:crypto (native); sshpk only reads and writes the private key file
 * format (openssh-key-v1, optionally encrypted with bcrypt-pbkdf + AES).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, createHash, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import sshpk from 'sshpk';
import { writeFileAtomic } from './atomic-file.js';
import { CaError } from './errors.js';
import { SshReader, SshWriter } from './wire.js';

export const ED25519 = 'ssh-ed25519';
const RAW_KEY_LENGTH = 32;
// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** Algorithms we recognise only to refuse them by name. */
const REFUSED_ALGORITHMS: Record<string, string> = {
  'ssh-rsa': 'RSA',
  'rsa-sha2-256': 'RSA',
  'rsa-sha2-512': 'RSA',
  'ssh-dss': 'DSA',
  'ecdsa-sha2-nistp256': 'ECDSA',
  'ecdsa-sha2-nistp384': 'ECDSA',
  'ecdsa-sha2-nistp521': 'ECDSA',
  'sk-ssh-ed25519@openssh.com': 'security-key Ed25519',
  'sk-ecdsa-sha2-nistp256@openssh.com': 'security-key ECDSA',
};

/** An Ed25519 public key as its 32 raw bytes. */
export type PublicKey = Buffer;

export interface KeyPair {
  readonly publicKey: PublicKey;
  readonly privateKey: KeyObject;
}

export function generateKeyPair(): KeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey: rawPublicKeyOf(privateKey) };
}

// DER prefixes of Ed25519 PKCS#8 private keys (RFC 8410): the 32-byte seed follows.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/*
 * Raw key bytes come from DER exports, not JWK: under load, Node 20.20's JWK
 * export of a freshly generated key was seen to deadlock in a benchmark.
 */
export function rawPublicKeyOf(privateKey: KeyObject): PublicKey {
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new CaError('KEY_UNSUPPORTED', 'only Ed25519 keys are supported');
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  return Buffer.from(spki.subarray(SPKI_PREFIX.length));
}

/** The 32-byte seed of an Ed25519 private key (what openssh-key-v1 stores; key derivations start from it). */
export function seedOf(privateKey: KeyObject): Buffer {
  const der = privateKey.export({ type: 'pkcs8', format: 'der' });
  if (der.length !== PKCS8_PREFIX.length + 32 || !der.subarray(0, PKCS8_PREFIX.length).equals(PKCS8_PREFIX)) {
    throw new CaError('KEY_INVALID', 'not an Ed25519 private key');
  }
  return Buffer.from(der.subarray(PKCS8_PREFIX.length));
}

function privateKeyFromSeed(seed: Buffer, publicKey: Buffer): KeyObject {
  // Node imports Ed25519 private keys from JWK (not from sshpk's PKCS#8).
  return createPrivateKey({
    format: 'jwk',
    key: { kty: 'OKP', crv: 'Ed25519', d: seed.toString('base64url'), x: publicKey.toString('base64url') },
  });
}

// LRU of KeyObjects: CA keys and recently seen device keys (renewals, logins).
const PUBLIC_KEY_CACHE_SIZE = 8192;
const publicKeyObjects = new Map<string, KeyObject>();

/** node:crypto KeyObject for a raw Ed25519 key, cached. */
export function publicKeyObject(raw: PublicKey): KeyObject {
  const id = raw.toString('base64');
  let key = publicKeyObjects.get(id);
  if (key) {
    publicKeyObjects.delete(id); // re-insert as most recently used
  } else {
    key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
    if (publicKeyObjects.size >= PUBLIC_KEY_CACHE_SIZE) publicKeyObjects.delete(publicKeyObjects.keys().next().value as string);
  }
  publicKeyObjects.set(id, key);
  return key;
}

export function signBytes(privateKey: KeyObject, data: Buffer): Buffer {
  return sign(null, data, privateKey);
}

export function verifyBytes(publicKey: PublicKey, data: Buffer, signature: Buffer): boolean {
  if (signature.length !== 64) return false;
  return verify(null, data, publicKeyObject(publicKey), signature);
}

/** RFC 4253 public key blob: string "ssh-ed25519", string key. */
export function publicKeyBlob(raw: PublicKey): Buffer {
  return new SshWriter().string(ED25519).string(raw).toBuffer();
}

/** Reads a public key blob; refuses other algorithms with KEY_UNSUPPORTED. */
export function parsePublicKeyBlob(blob: Buffer): PublicKey {
  const reader = new SshReader(blob, 'public key');
  const algorithm = readAlgorithm(reader);
  assertEd25519(algorithm);
  let raw: Buffer;
  try {
    raw = reader.string();
    reader.end();
  } catch {
    throw new CaError('KEY_INVALID', 'public key blob is malformed');
  }
  if (raw.length !== RAW_KEY_LENGTH) throw new CaError('KEY_INVALID', 'Ed25519 public key must be 32 bytes');
  return Buffer.from(raw);
}

function readAlgorithm(reader: SshReader): string {
  try {
    return reader.text();
  } catch {
    throw new CaError('KEY_INVALID', 'not an SSH public key');
  }
}

export function assertEd25519(algorithm: string): void {
  if (algorithm === ED25519) return;
  const family = REFUSED_ALGORITHMS[algorithm];
  if (family) {
    throw new CaError('KEY_UNSUPPORTED', `${family} keys are not accepted; use Ed25519 (ssh-keygen -t ed25519)`);
  }
  if (algorithm.endsWith('-cert-v01@openssh.com')) {
    throw new CaError('KEY_UNSUPPORTED', 'a certificate was given where a plain public key is expected');
  }
  throw new CaError('KEY_UNSUPPORTED', 'unknown key algorithm; use Ed25519');
}

/** "ssh-ed25519 AAAA… comment" */
export function formatPublicKey(raw: PublicKey, comment?: string): string {
  const line = `${ED25519} ${publicKeyBlob(raw).toString('base64')}`;
  return comment ? `${line} ${comment}` : line;
}

/**
 * Parses an authorized_keys-style public key line. Only Ed25519 is
 * accepted; RSA/DSA/ECDSA are refused with KEY_UNSUPPORTED, anything that
 * is not a key line with KEY_INVALID.
 */
export function parsePublicKey(text: string): PublicKey {
  const [algorithm, base64] = text.trim().split(/\s+/, 2); // the comment may hold spaces
  if (!algorithm || !base64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) {
    throw new CaError('KEY_INVALID', 'not an OpenSSH public key line');
  }
  assertEd25519(algorithm);
  const blob = Buffer.from(base64, 'base64');
  const reader = new SshReader(blob, 'public key');
  if (readAlgorithm(reader) !== algorithm) {
    throw new CaError('KEY_INVALID', 'public key line names a different algorithm than its blob');
  }
  return parsePublicKeyBlob(blob);
}

/** "SHA256:…" as ssh-keygen -l prints it. */
export function fingerprint(raw: PublicKey): string {
  return `SHA256:${createHash('sha256').update(publicKeyBlob(raw)).digest('base64').replace(/=+$/, '')}`;
}

export interface EncodePrivateKeyOptions {
  readonly passphrase?: string;
  readonly comment?: string;
}

/** The openssh-key-v1 PEM text, encrypted (aes256-ctr, bcrypt-pbkdf) when a passphrase is given. */
export function encodePrivateKey(pair: KeyPair, options: EncodePrivateKeyOptions = {}): string {
  const key = new sshpk.PrivateKey({
    type: 'ed25519',
    parts: [
      { name: 'A', data: pair.publicKey },
      { name: 'k', data: seedOf(pair.privateKey) },
    ],
  } as unknown as sshpk.PrivateKey);
  if (options.comment) key.comment = options.comment;
  const format = options.passphrase
    ? ({ passphrase: options.passphrase, cipher: 'aes256-ctr' } as sshpk.Format.WriteOptions)
    : undefined;
  return key.toString('openssh', format);
}

export interface DecodePrivateKeyOptions {
  readonly passphrase?: string;
}

export function decodePrivateKey(text: string | Buffer, options: DecodePrivateKeyOptions = {}): KeyPair {
  let parsed: sshpk.PrivateKey;
  try {
    parsed = sshpk.parsePrivateKey(text, 'auto', options.passphrase === undefined ? {} : { passphrase: options.passphrase });
  } catch (err) {
    const name = (err as Error).name;
    if (name === 'KeyEncryptedError') {
      throw new CaError('KEY_ENCRYPTED', 'the private key is encrypted and no passphrase was given');
    }
    if (/passphrase/i.test((err as Error).message)) {
      throw new CaError('KEY_BAD_PASSPHRASE', 'the passphrase does not decrypt the private key');
    }
    throw new CaError('KEY_INVALID', 'not a readable private key file');
  }
  if (parsed.type !== 'ed25519') {
    throw new CaError('KEY_UNSUPPORTED', `${parsed.type.toUpperCase()} private keys are not accepted; use Ed25519`);
  }
  const parts = parsed.part as unknown as Record<string, { data: Buffer }>;
  const publicKey = Buffer.from(parts.A!.data);
  const privateKey = privateKeyFromSeed(Buffer.from(parts.k!.data.subarray(0, 32)), publicKey);
  if (!rawPublicKeyOf(privateKey).equals(publicKey)) {
    throw new CaError('KEY_INVALID', 'the private key does not match its public half');
  }
  return { publicKey, privateKey };
}

/** Writes PATH (0600, atomically) and PATH.pub (0644). */
export async function saveKeyPair(path: string, pair: KeyPair, options: EncodePrivateKeyOptions = {}): Promise<void> {
  await writeFileAtomic(path, encodePrivateKey(pair, options), { mode: 0o600 });
  await writeFileAtomic(`${path}.pub`, `${formatPublicKey(pair.publicKey, options.comment)}\n`, { mode: 0o644 });
}

export async function loadKeyPair(path: string, options: DecodePrivateKeyOptions = {}): Promise<KeyPair> {
  return decodePrivateKey(await readFile(path), options);
}

export async function loadPublicKey(path: string): Promise<PublicKey> {
  return parsePublicKey(await readFile(path, 'utf8'));
}
