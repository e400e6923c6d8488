/**
 * Identifiers and secrets. Secrets carry at least 128 bits of entropy (192
 * for tokens and API keys), are shown once, and are stored only as SHA-256
 * hashes; comparisons of hashes are constant-time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

/** `prefix_` + 16 base32 characters (80 random bits): public identifiers. */
export function newId(prefix: 'dev' | 'tok' | 'key' | 'bat' | 'njt' | 'node'): string {
  return `${prefix}_${base32(randomBytes(10))}`;
}

/** An enrollment token: `cte_` + 192 random bits. */
export function newTokenSecret(): string {
  return `cte_${randomBytes(24).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

export function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** API keys read `ctk_<id>.<secret>`: the id finds the row, the secret is compared by hash. */
export function newApiKeySecret(id: string): string {
  return `ctk_${id}.${randomBytes(24).toString('base64url')}`;
}

export function splitApiKey(presented: string): { id: string; secret: string } | undefined {
  const m = /^ctk_(key_[a-z2-7]{16})\.([A-Za-z0-9_-]{32})$/.exec(presented);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}
