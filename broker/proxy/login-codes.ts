/**
 * One-time sign-in codes: how a session reaches a device hostname without
 * the operator typing a credential there (as Teleport's application
 * access hands over its sessions). The broker's origin mints a code for
 * (API key, device name) after sign-in and redirects the browser to the
 * device hostname's callback with it; the callback redeems it once and sets
 * that hostname's own session cookie.
 *
 * A code is 256 random bits, kept only as its SHA-256 (a lookup by hash
 * compares nothing secret byte by byte), lives LOGIN_CODE_TTL_MS, and is
 * spent by its first presentation, right or wrong. Codes live in this
 * process's memory: one broker node redeems what it minted (several nodes
 * will need them in the shared store).
 */
import { createHash, randomBytes } from 'node:crypto';
import { BrokerError } from '../core/errors.js';

export const LOGIN_CODE_TTL_MS = 60_000;
/** Codes outstanding at once; the oldest go first (minting needs a signed-in operator). */
const MAX_CODES = 10_000;

export interface LoginCodeClaims {
  /** The API key the operator signed in with: the device session names it. */
  readonly keyId: string;
  /** The one device whose hostname may redeem the code. */
  readonly deviceName: string;
}

function digest(code: string): string {
  return createHash('sha256').update(code).digest('base64url');
}

export class LoginCodes {
  private readonly codes = new Map<string, { claims: LoginCodeClaims; expiresAt: number }>();

  constructor(private readonly clock: () => Date) {}

  /** A fresh code for CLAIMS (base64url, 43 characters). */
  mint(claims: LoginCodeClaims): string {
    const now = this.clock().getTime();
    for (const [key, entry] of this.codes) if (entry.expiresAt <= now) this.codes.delete(key);
    // A Map iterates in insertion order: the first key is the oldest code.
    if (this.codes.size >= MAX_CODES) this.codes.delete(this.codes.keys().next().value!);
    const code = randomBytes(32).toString('base64url');
    this.codes.set(digest(code), { claims, expiresAt: now + LOGIN_CODE_TTL_MS });
    return code;
  }

  /** The claims of CODE presented on DEVICENAME's hostname; LOGIN_CODE_INVALID if unknown, spent, expired or another device's. */
  redeem(code: string, deviceName: string): LoginCodeClaims {
    const key = digest(code);
    const entry = this.codes.get(key);
    this.codes.delete(key);
    if (!entry || entry.expiresAt <= this.clock().getTime() || entry.claims.deviceName !== deviceName) {
      throw new BrokerError('LOGIN_CODE_INVALID', 'this sign-in link is not valid (already used, expired, or for another device): sign in again');
    }
    return entry.claims;
  }
}
