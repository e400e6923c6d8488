/**
 * The console's session on the broker's own origin: who signed in (an API
 * key's id and name, or an OIDC subject, name and e-mail), by which method,
 * with which role, until when. It travels as a cookie the broker signs with
 * HMAC-SHA256 (a key of its own, made on first start): `__Host-` (Secure,
 * Path=/, no Domain), HttpOnly, SameSite=Strict, at most
 * CONSOLE_SESSION_MINUTES. The CSRF token is derived from the cookie (an HMAC
 * of it under another label), so it needs no server state and changes with
 * every sign-in; unsafe requests must carry it in X-CSRF-Token and come from
 * the broker's own origin (broker/proxy/origin.ts).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { ApiKeyRole, ConsoleSignInMethod } from '../../api/index.js';
import { readCookie } from '../proxy/session-cookie.js';
import { crossOriginRefusal } from '../proxy/origin.js';

export const CONSOLE_COOKIE = '__Host-certunnel-console';
/** A console session lasts this long, then the person signs in again. */
export const CONSOLE_SESSION_MINUTES = 8 * 60;

const VERSION = 'c1';
const ROLES: ReadonlySet<string> = new Set(['admin', 'operator', 'provisioner']);
const METHODS: ReadonlySet<string> = new Set(['apikey', 'oidc']);
/** Bounds the cookie: names and e-mails longer than this are cut. */
const MAX_TEXT = 200;

/** Who a console session is for. For an API key: subject = key id, name = key name, role = the key's (re-read on every request). */
export interface ConsoleIdentity {
  readonly method: ConsoleSignInMethod;
  readonly subject: string;
  readonly name: string;
  readonly email: string | null;
  readonly role: Exclude<ApiKeyRole, 'proxy'>;
}

export interface ConsoleSession extends ConsoleIdentity {
  readonly expiresAt: Date;
}

function mac(secret: Buffer, label: string, text: string): string {
  return createHmac('sha256', secret).update(`${label}|${text}`).digest('base64url');
}

function equalText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** `c1.<base64url JSON claims>.<hmac>` */
export function signConsoleSession(secret: Buffer, identity: ConsoleIdentity, expiresAt: Date): string {
  const claims = {
    m: identity.method, s: identity.subject.slice(0, MAX_TEXT), n: identity.name.slice(0, MAX_TEXT), e: identity.email?.slice(0, MAX_TEXT) ?? null,
    r: identity.role, x: Math.floor(expiresAt.getTime() / 1000),
  };
  const body = Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${VERSION}.${body}.${mac(secret, 'console-session', body)}`;
}

/** The session in VALUE if the broker signed it and it has not expired at NOW. */
export function verifyConsoleSession(secret: Buffer, value: string, now: Date): ConsoleSession | undefined {
  const parts = value.split('.');
  if (parts.length !== 3 || parts[0] !== VERSION || parts[1]!.length > 2048) return undefined;
  const [, body, presented] = parts as [string, string, string];
  if (!equalText(presented, mac(secret, 'console-session', body))) return undefined;
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const text = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
  if (!METHODS.has(String(c.m)) || !ROLES.has(String(c.r)) || !text(c.s) || !text(c.n) || typeof c.x !== 'number') return undefined;
  const expiresAt = new Date(c.x * 1000);
  if (expiresAt <= now) return undefined;
  return {
    method: c.m as ConsoleSignInMethod, subject: c.s, name: c.n, email: text(c.e) ? c.e : null, role: c.r as ConsoleIdentity['role'], expiresAt,
  };
}

/** The console session cookie's value in a Cookie header. */
export function consoleCookieOf(cookieHeader: string | undefined): string | undefined {
  return readCookie(cookieHeader, CONSOLE_COOKIE);
}

/** The CSRF token of the session whose cookie is COOKIEVALUE. */
export function csrfTokenOf(secret: Buffer, cookieValue: string): string {
  return mac(secret, 'console-csrf', cookieValue);
}

/**
 * Why an unsafe request made with the session cookie COOKIEVALUE may not act
 * (CSRF_TOKEN_INVALID), or undefined when it may: its X-CSRF-Token must be
 * the session's, and its Origin (or Sec-Fetch-Site) the broker's own origin OWN.
 */
export function csrfRefusal(secret: Buffer, cookieValue: string, req: { method: string; headers: IncomingHttpHeaders; own: URL | undefined }): string | undefined {
  const crossOrigin = crossOriginRefusal({ method: req.method, headers: req.headers, own: req.own, upgrade: false });
  if (crossOrigin) return crossOrigin;
  if (['GET', 'HEAD', 'OPTIONS'].includes(req.method.toUpperCase())) return undefined;
  const given = req.headers['x-csrf-token'];
  if (typeof given !== 'string' || !equalText(given, csrfTokenOf(secret, cookieValue))) return 'this request needs the console session CSRF token (X-CSRF-Token)';
  return undefined;
}

export function consoleCookieHeader(value: string, maxAgeSeconds: number): string {
  return `${CONSOLE_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; Secure; HttpOnly; SameSite=Strict`;
}

export function clearConsoleCookieHeader(): string {
  return `${CONSOLE_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict`;
}
