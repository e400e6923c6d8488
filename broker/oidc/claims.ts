/**
 * From the claims an identity provider vouched for (a validated ID token,
 * completed by its userinfo answer) to a console identity: who (issuer +
 * subject, e-mail and name for people reading the audit trail) and which
 * role, by the configured claim-value → role mapping. Pure functions,
 * table-tested; a user whose claim maps to nothing gets no role.
 */
import { OIDC_ROLES, type OidcConfig, type OidcRole } from '../core/oidc-config.js';

export interface OidcIdentity {
  /** The provider's `sub`: stable and unique at that issuer (e-mail addresses are neither). */
  readonly subject: string;
  readonly issuer: string;
  readonly email: string | null;
  readonly name: string | null;
  readonly role: OidcRole;
  /** When the console session this sign-in opens ends (now + oidc.sessionMinutes). */
  readonly expiresAt: Date;
}

/** The audit trail's actor for a person signed in by single sign-on. */
export function oidcActor(subject: string): string {
  return `oidc:${subject}`;
}

/** The values of the claim at PATH (a name, or a path into nested objects): a string is one value, an array its strings; anything else none. */
export function claimValues(claims: Readonly<Record<string, unknown>>, path: OidcConfig['groupsClaim']): string[] {
  let value: unknown = claims;
  for (const key of typeof path === 'string' ? [path] : path) {
    if (typeof value !== 'object' || value === null || Array.isArray(value) || !Object.hasOwn(value, key)) return [];
    value = (value as Record<string, unknown>)[key];
  }
  if (typeof value === 'string') return [value];
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

/** Whether CLAIMS has the claim at PATH at all (an empty list counts: the provider did say). */
export function hasClaim(claims: Readonly<Record<string, unknown>>, path: OidcConfig['groupsClaim']): boolean {
  let value: unknown = claims;
  for (const key of typeof path === 'string' ? [path] : path) {
    if (typeof value !== 'object' || value === null || Array.isArray(value) || !Object.hasOwn(value, key)) return false;
    value = (value as Record<string, unknown>)[key];
  }
  return true;
}

/** The strongest role any of VALUES maps to (admin > operator > provisioner, the order of OIDC_ROLES), or undefined. */
export function roleFor(values: readonly string[], mapping: Readonly<Record<string, OidcRole>>): OidcRole | undefined {
  let best: number | undefined;
  for (const v of values) {
    if (!Object.hasOwn(mapping, v)) continue;
    const rank = OIDC_ROLES.indexOf(mapping[v]!);
    if (best === undefined || rank < best) best = rank;
  }
  return best === undefined ? undefined : OIDC_ROLES[best];
}

/** A short printable string claim (e-mail, name), or null: these reach pages and the audit trail. */
function textClaim(value: unknown, max: number): string | null {
  if (typeof value !== 'string' || value === '' || value.length > max || /[\p{Cc}]/u.test(value)) return null;
  return value;
}

/** At most 20 claim values of at most 100 characters, for the audit row of a refused user (which value did the provider send?). */
export function auditedValues(values: readonly string[]): string[] {
  return values.slice(0, 20).map((v) => (v.length > 100 ? `${v.slice(0, 100)}…` : v));
}

export type IdentityResult =
  | { readonly ok: true; readonly identity: OidcIdentity }
  | { readonly ok: false; readonly subject: string; readonly email: string | null; readonly values: string[] };

/** CLAIMS (already validated by openid-client: signature, iss, aud, exp, nonce) → the identity, or why not (no mapped role). */
export function identityFromClaims(claims: Readonly<Record<string, unknown>>, config: Pick<OidcConfig, 'groupsClaim' | 'roles' | 'sessionMinutes'>, issuer: string, now: Date): IdentityResult {
  const subject = String(claims.sub);
  const email = textClaim(claims.email, 320);
  const values = claimValues(claims, config.groupsClaim);
  const role = roleFor(values, config.roles);
  if (!role) return { ok: false, subject, email, values };
  return {
    ok: true,
    identity: {
      subject, issuer, email, role,
      name: textClaim(claims.name, 200) ?? textClaim(claims.preferred_username, 200),
      expiresAt: new Date(now.getTime() + config.sessionMinutes * 60_000),
    },
  };
}
