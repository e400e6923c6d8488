/**
 * Browser sessions of the HTTP proxy: after a login with an API key, the
 * broker sets a cookie that names the key (never contains it), the device
 * hostname it was issued for, and an expiry, signed with HMAC-SHA256 by a
 * key only the broker holds. The cookie is host-only (`__Host-` prefix:
 * Secure, Path=/, no Domain), HttpOnly and SameSite=Strict, so it goes to
 * one device hostname only, no script reads it, and other sites cannot make
 * the browser send it. It is stripped before a request is relayed, and a
 * device cannot overwrite it (its Set-Cookie for that name is dropped).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../../ca/index.js';

export const SESSION_COOKIE = '__Host-certunnel';

/**
 * What a session on the broker's own origin (signed in there, so that the
 * next device needs no key) is bound to in place of a hostname: no device
 * hostname (hostOf) starts with a dot, so neither kind of session passes
 * for the other.
 */
export const BROKER_SESSION_HOST = '.broker';

const VERSION = 'v1';
const KEY_ID = /^key_[a-z2-7]{16}$/;

function mac(secret: Buffer, keyId: string, host: string, expires: number): string {
  return createHmac('sha256', secret).update(`${VERSION}|${keyId}|${host}|${expires}`).digest('base64url');
}

/** `v1.<api key id>.<expiry, unix seconds>.<hmac>` */
export function signSession(secret: Buffer, claims: { keyId: string; host: string; expiresAt: Date }): string {
  const expires = Math.floor(claims.expiresAt.getTime() / 1000);
  return `${VERSION}.${claims.keyId}.${expires}.${mac(secret, claims.keyId, claims.host, expires)}`;
}

/** The API key id the session names, if VALUE is genuine, for HOST, and unexpired at NOW. */
export function verifySession(secret: Buffer, value: string, host: string, now: Date): { keyId: string; expiresAt: Date } | undefined {
  const parts = value.split('.');
  if (parts.length !== 4 || parts[0] !== VERSION || !KEY_ID.test(parts[1]!) || !/^\d{1,12}$/.test(parts[2]!)) return undefined;
  const [, keyId, exp, presented] = parts as [string, string, string, string];
  const expected = Buffer.from(mac(secret, keyId, host, Number(exp)));
  const given = Buffer.from(presented);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  const expiresAt = new Date(Number(exp) * 1000);
  return expiresAt > now ? { keyId, expiresAt } : undefined;
}

/** RFC 6265 section 5.4: `name=value; name2=value2`. The first cookie called NAME. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The Cookie header without NAME, or undefined when nothing is left. */
export function stripCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  const kept = header
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p !== '' && !(p.slice(0, Math.max(p.indexOf('='), 0)).trim() === name));
  return kept.length ? kept.join('; ') : undefined;
}

/** Does a Set-Cookie line (from a device) set NAME? */
export function setsCookie(line: string, name: string): boolean {
  const i = line.indexOf('=');
  return i > 0 && line.slice(0, i).trim() === name;
}

/**
 * SAMESITE Strict on device hostnames. Lax on the broker's origin: the
 * browser arrives there by a redirect from a device hostname (another site
 * when the device domain is its own registrable domain, as recommended),
 * and a top-level GET is all Lax lets through; that GET only mints a code
 * for the operator's own session, which lands on the device it names.
 */
export function sessionCookieHeader(value: string, maxAgeSeconds: number, sameSite: 'Strict' | 'Lax' = 'Strict'): string {
  return `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; Secure; HttpOnly; SameSite=${sameSite}`;
}

export function clearSessionCookieHeader(): string {
  return `${SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict`;
}

/** The HMAC key (32 random bytes, 0600), made on first use; several broker nodes share it through the data directory. */
export async function loadOrCreateSessionSecret(path: string): Promise<Buffer> {
  try {
    const key = Buffer.from((await readFile(path, 'utf8')).trim(), 'base64');
    if (key.length >= 32) return key;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = randomBytes(32);
  await writeFileAtomic(path, `${key.toString('base64')}\n`, { mode: 0o600 });
  return key;
}
