/**
 * A rotation's next key material, sealed for the store (issue #14,
 * docs/rotation.md): every node of the cluster must load the same next
 * key, and the store is the one place they all read. The material is
 * sealed with AES-256-GCM under a key derived (HKDF-SHA256, a random salt
 * per seal) from the seed of the user CA private key that is current when
 * the rotation starts: every node holds that key, the database alone does
 * not, so a copy of the database (a backup, a read-only role) reveals no
 * next key. The root's name is the associated data: material sealed for
 * one root does not open as another's.
 *
 * A user-ca rotation changes the key this derives from; the rotation's
 * sealed material stays under the CA it started with (the one every node
 * had at start), which a node down during the commit still holds.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { seedOf, type KeyPair } from '../../ca/index.js';
import { BrokerError } from './errors.js';
import type { TrustRootName } from './trust-roots.js';

/** The next key material of a rotation, by root. Private keys in clear: it only ever exists sealed or in memory. */
export type NextKeyMaterial =
  /** The next user CA: an openssh-key-v1 private key (unencrypted). */
  | { readonly root: 'user-ca'; readonly key: string }
  /** The next host key, and its host certificate signed by the current host CA. */
  | { readonly root: 'host-key'; readonly key: string; readonly hostCertificate: string }
  /** The next host CA, and a host certificate of the current host key signed by it. */
  | { readonly root: 'host-ca'; readonly key: string; readonly hostCertificate: string }
  /** The next TLS identity of the API: PEM key and self-signed certificate. */
  | { readonly root: 'api-tls'; readonly key: string; readonly cert: string };

const INFO = 'certunnel rotation seal v1';
const SEALED = /^v1\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{22})$/;

function sealKey(userCa: KeyPair, salt: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', seedOf(userCa.privateKey), salt, INFO, 32));
}

const aad = (root: TrustRootName) => Buffer.from(`certunnel rotation ${root}`, 'utf8');

/** `v1.<salt>.<iv>.<ciphertext>.<tag>`, base64url. */
export function sealNextKey(material: NextKeyMaterial, userCa: KeyPair): string {
  const salt = randomBytes(16);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', sealKey(userCa, salt), iv).setAAD(aad(material.root));
  const body = Buffer.concat([cipher.update(JSON.stringify(material), 'utf8'), cipher.final()]);
  return ['v1', salt, iv, body, cipher.getAuthTag()].map((p) => (typeof p === 'string' ? p : p.toString('base64url'))).join('.');
}

const sealInvalid = (): BrokerError =>
  new BrokerError('INTERNAL', "the rotation's sealed key does not open under this node's user CA (altered in the store, or another fleet's)");

function fields(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
}

/** The material sealed for ROOT under USERCA; throws INTERNAL (no detail of the blob) if it does not open or is not ROOT's. */
export function openNextKey(sealed: string, root: TrustRootName, userCa: KeyPair): NextKeyMaterial {
  const m = SEALED.exec(sealed);
  if (!m) throw sealInvalid();
  const [salt, iv, body, tag] = m.slice(1, 5).map((p) => Buffer.from(p, 'base64url')) as [Buffer, Buffer, Buffer, Buffer];
  let plain: string;
  try {
    const decipher = createDecipheriv('aes-256-gcm', sealKey(userCa, salt), iv).setAAD(aad(root));
    decipher.setAuthTag(tag);
    plain = Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8');
  } catch {
    throw sealInvalid();
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = fields(JSON.parse(plain));
  } catch {
    throw sealInvalid();
  }
  const str = (k: string) => (typeof parsed[k] === 'string' ? (parsed[k] as string) : undefined);
  const key = str('key');
  if (parsed.root !== root || key === undefined) throw sealInvalid();
  switch (root) {
    case 'user-ca':
      return { root, key };
    case 'host-key':
    case 'host-ca': {
      const hostCertificate = str('hostCertificate');
      if (hostCertificate === undefined) throw sealInvalid();
      return { root, key, hostCertificate };
    }
    case 'api-tls': {
      const cert = str('cert');
      if (cert === undefined) throw sealInvalid();
      return { root, key, cert };
    }
  }
}
