/**
 * Node join tokens (`certunnel node token`, `certunnel join`): the token
 * reads `cjt_<id>.<secret>` with a 256-bit secret. The store keeps only the
 * SHA-256 of the whole token (it finds the row) and the cluster's files
 * sealed with AES-256-GCM under a key derived from the secret with HKDF
 * (RFC 5869; SHA-256, salt: the token id, info: SEAL_INFO), the token id as
 * additional data. Whoever reads the database (a backup, a replica) sees
 * ciphertext: only the token's holder opens it, once. A sealed blob that
 * was altered fails GCM's tag check and opens to nothing.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { BrokerError } from './errors.js';
import { hashSecret, newId } from './secrets.js';

const TOKEN = /^cjt_(njt_[a-z2-7]{16})\.([A-Za-z0-9_-]{43})$/;
const SEAL_INFO = 'certunnel node join v1';
const SEALED = /^v1\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{22})$/;

export interface JoinToken {
  /** `njt_…`: the row's id (public). */
  readonly id: string;
  /** The whole token, `cjt_<id>.<secret>`: shown once. */
  readonly token: string;
  readonly secret: Buffer;
}

/** One file of a data directory, as sealed: its path inside the directory, its mode, its bytes. */
export interface SealedFile {
  readonly path: string;
  readonly mode: number;
  readonly data: Buffer;
}

export function newJoinToken(): JoinToken {
  const id = newId('njt');
  const secret = randomBytes(32);
  return { id, token: `cjt_${id}.${secret.toString('base64url')}`, secret };
}

const invalid = (): BrokerError => new BrokerError('NODE_TOKEN_INVALID', 'the node join token is invalid, already used or expired; mint another with certunnel node token on a node of the cluster');

/** Throws NODE_TOKEN_INVALID for anything that is not a join token (never echoing it). */
export function parseJoinToken(text: string): JoinToken {
  const m = TOKEN.exec(text.trim());
  const secret = m ? Buffer.from(m[2]!, 'base64url') : undefined;
  if (!m || secret?.length !== 32) throw invalid();
  return { id: m[1]!, token: text.trim(), secret };
}

export { invalid as joinTokenInvalid };

/** What the store keeps to find the token's row. */
export function joinTokenHash(token: JoinToken): string {
  return hashSecret(token.token);
}

function sealKey(token: JoinToken): Buffer {
  return Buffer.from(hkdfSync('sha256', token.secret, Buffer.from(token.id, 'utf8'), SEAL_INFO, 32));
}

export function sealFiles(files: readonly SealedFile[], token: JoinToken): string {
  const plain = Buffer.from(JSON.stringify({ files: files.map((f) => ({ path: f.path, mode: f.mode, data: f.data.toString('base64') })) }), 'utf8');
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', sealKey(token), iv);
  cipher.setAAD(Buffer.from(token.id, 'utf8'));
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return `v1.${iv.toString('base64url')}.${body.toString('base64url')}.${cipher.getAuthTag().toString('base64url')}`;
}

const sealInvalid = (): BrokerError =>
  new BrokerError('NODE_TOKEN_SEAL_INVALID', "the cluster's sealed files do not open under this token (altered in the database?); nothing was written");

function parsePlain(plain: Buffer): SealedFile[] {
  const parsed = JSON.parse(plain.toString('utf8')) as { files?: unknown };
  if (!Array.isArray(parsed.files)) throw sealInvalid();
  return parsed.files.map((f: { path?: unknown; mode?: unknown; data?: unknown }) => {
    if (typeof f.path !== 'string' || typeof f.mode !== 'number' || typeof f.data !== 'string') throw sealInvalid();
    return { path: f.path, mode: f.mode, data: Buffer.from(f.data, 'base64') };
  });
}

/** The files sealed under TOKEN; throws NODE_TOKEN_SEAL_INVALID if the blob was altered (or sealed under another token). */
export function unsealFiles(sealed: string, token: JoinToken): SealedFile[] {
  const m = SEALED.exec(sealed);
  if (!m) throw sealInvalid();
  const decipher = createDecipheriv('aes-256-gcm', sealKey(token), Buffer.from(m[1]!, 'base64url'));
  decipher.setAAD(Buffer.from(token.id, 'utf8'));
  decipher.setAuthTag(Buffer.from(m[3]!, 'base64url'));
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(Buffer.from(m[2]!, 'base64url')), decipher.final()]);
  } catch {
    throw sealInvalid();
  }
  try {
    return parsePlain(plain);
  } catch (err) {
    throw err instanceof BrokerError ? err : sealInvalid();
  }
}
