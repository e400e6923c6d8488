/**
 * What a sign-in must remember between GET /console/oidc/login and the
 * provider's callback: state, nonce, the PKCE code verifier, where to go
 * afterwards and when it started. It travels in the browser that started
 * it, as a cookie sealed with AES-256-GCM (confidential and tamper-proof)
 * under a key derived (HKDF) from the broker's session key:
 *
 * - `__Host-` (Secure, Path=/, no Domain): only the broker's own origin
 *   gets it; HttpOnly: no script reads the verifier; SameSite=Lax: the
 *   provider's redirect back is a cross-site top-level GET, which Strict
 *   would strip; Max-Age = oidc.loginTimeoutSeconds.
 * - Why a cookie and not a map in the broker's memory: a stranger can
 *   start sign-ins without end, and the cookie costs the broker nothing
 *   for each; the callback may land on another broker node (they share the
 *   session key) or after a restart. The one thing kept in memory is the
 *   set of states already used (UsedStates, bounded), so a callback replayed
 *   with its cookie is refused before the provider is asked.
 *
 * Binding: the callback's `state` must equal the sealed one (constant
 * time), so a code sent to another browser (login CSRF) finds no matching
 * cookie there.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';

export const FLOW_COOKIE = '__Host-certunnel-oidc';

const VERSION = 'v1';
const AAD = Buffer.from('certunnel oidc flow v1');

export interface FlowState {
  readonly state: string;
  readonly nonce: string;
  readonly codeVerifier: string;
  /** A same-origin path (safeNext) to land on after signing in. */
  readonly next: string;
  /** Unix milliseconds when the sign-in started. */
  readonly startedAt: number;
}

/** The sealing key: HKDF-SHA256 of the broker's session key, for this purpose only (domain separation from the proxy's HMAC use). */
export function deriveFlowKey(sessionSecret: Buffer): Buffer {
  if (sessionSecret.length < 32) throw new RangeError('the session secret must hold at least 32 bytes');
  return Buffer.from(hkdfSync('sha256', sessionSecret, Buffer.alloc(0), 'certunnel oidc flow state v1', 32));
}

/** `v1.<base64url(iv ‖ ciphertext ‖ tag)>` */
export function sealFlow(key: Buffer, flow: FlowState): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(AAD);
  const body = Buffer.concat([cipher.update(JSON.stringify(flow), 'utf8'), cipher.final()]);
  return `${VERSION}.${Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url')}`;
}

const isText = (v: unknown, max: number): v is string => typeof v === 'string' && v.length > 0 && v.length <= max;

/** The flow sealed in VALUE, or undefined when it is not one of ours, was altered, or is malformed. */
export function openFlow(key: Buffer, value: string | undefined): FlowState | undefined {
  if (!value || value.length > 4096 || !value.startsWith(`${VERSION}.`)) return undefined;
  const raw = Buffer.from(value.slice(VERSION.length + 1), 'base64url');
  if (raw.length < 12 + 16 + 2) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12)).setAAD(AAD);
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    const text = Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]).toString('utf8');
    const flow = JSON.parse(text) as Partial<FlowState>;
    if (!isText(flow.state, 256) || !isText(flow.nonce, 256) || !isText(flow.codeVerifier, 256) || !isText(flow.next, 2048)) return undefined;
    if (typeof flow.startedAt !== 'number' || !Number.isFinite(flow.startedAt)) return undefined;
    return flow as FlowState;
  } catch {
    return undefined;
  }
}

/** Constant-time comparison of the callback's state with the sealed one. */
export function sameState(presented: string | null, sealed: string): boolean {
  if (presented === null) return false;
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(sealed).digest();
  return timingSafeEqual(a, b);
}

export function flowCookieHeader(value: string, maxAgeSeconds: number): string {
  return `${FLOW_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; Secure; HttpOnly; SameSite=Lax`;
}

export function clearFlowCookieHeader(): string {
  return `${FLOW_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax`;
}

/**
 * States already used by a callback on this node, until their sign-in
 * would have expired anyway. Bounded: past MAX entries the oldest are
 * forgotten first (those are the nearest to expiry; a replay of one still
 * meets the cleared cookie in the browser and the provider's single-use
 * code).
 */
export class UsedStates {
  private readonly used = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly max = 100_000,
  ) {}

  /** Marks STATE used at NOW; false if it already was. */
  consume(state: string, now: number): boolean {
    for (const [k, until] of this.used) {
      if (until > now && this.used.size < this.max) break;
      this.used.delete(k);
    }
    const key = createHash('sha256').update(state).digest('base64url');
    if (this.used.has(key)) return false;
    this.used.set(key, now + this.ttlMs);
    return true;
  }

  get size(): number {
    return this.used.size;
  }
}
