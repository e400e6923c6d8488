/**
 * Certificate renewal: when to renew (about two thirds into the
 * certificate's life, as the broker suggests, with a little jitter so that a
 * fleet enrolled together does not renew together), and the renewal itself
 * (POST /v1/renew signed with the device key, over the API pinned by the
 * configured pin or any pin of the stored trust set; the answer replaces the
 * certificate, known_hosts, the trust set and state.json atomically).
 */
import type { Certificate } from '../ca/index.js';
import type { ApiCall, ApiClientOptions, CertificateGrantWire } from '../api/index.js';
import { AgentError } from './errors.js';
import { buildRenewRequest } from './renew-request.js';
import { callWithCapabilities } from './capabilities.js';
import { checkGrant, writeGrant, type BrokerApiRef, type Enrollment } from './state-dir.js';
import { trustOfGrant, type TrustOutcome } from './trust-set.js';

/** The fraction of the certificate's life after which the agent renews when the broker says nothing usable. */
const RENEW_AT_FRACTION = 2 / 3;
/** Up to this fraction of the life is added at random after the renewal time. */
export const RENEW_JITTER_FRACTION = 0.05;

export interface Validity {
  /** ms since the epoch */
  readonly validAfter: number;
  readonly validBefore: number;
}

export function validityOf(cert: Certificate): Validity {
  return { validAfter: Number(cert.validAfter) * 1000, validBefore: Number(cert.validBefore) * 1000 };
}

/**
 * When to renew (ms since the epoch). SUGGESTED is the broker's renewAfter
 * for this very certificate (ignored if absent or outside the validity
 * window); otherwise two thirds into the life. RANDOM adds up to 5% of the
 * life, never beyond 90% of it.
 */
export function renewalDueAt(validity: Validity, suggested: number | undefined, random: () => number): number {
  const life = Math.max(0, validity.validBefore - validity.validAfter);
  const fallback = validity.validAfter + life * RENEW_AT_FRACTION;
  const base = suggested !== undefined && Number.isFinite(suggested) && suggested > validity.validAfter && suggested < validity.validBefore ? suggested : fallback;
  const jittered = base + random() * life * RENEW_JITTER_FRACTION;
  const latest = Math.max(base, validity.validAfter + life * 0.9);
  return Math.round(Math.max(validity.validAfter, Math.min(jittered, latest)));
}

/** The broker's renewAfter applies only to the certificate it was issued with. */
export function suggestedRenewal(enrollment: Enrollment): number | undefined {
  if (enrollment.state.serial !== enrollment.certificate.serial.toString()) return undefined;
  const at = Date.parse(enrollment.state.renewAfter);
  return Number.isFinite(at) ? at : undefined;
}


export interface RenewOptions {
  readonly enrollment: Enrollment;
  readonly broker: BrokerApiRef;
  readonly timeoutMs: number;
  readonly api: ApiCall;
  readonly now: Date;
}

export interface RenewResult {
  readonly grant: CertificateGrantWire;
  /** The trust set now stored, and the grant's refused one if it was malformed (the previous then kept). */
  readonly trust: TrustOutcome;
}

/** Renews once; throws the ApiError (or AgentError GRANT_INVALID) as is. Returns the grant that was written. */
export async function renewCertificate(options: RenewOptions): Promise<RenewResult> {
  const { enrollment } = options;
  const request = buildRenewRequest({ deviceId: enrollment.state.deviceId, key: enrollment.key, now: options.now });
  const api: ApiClientOptions = {
    baseUrl: options.broker.url, pin: options.broker.pin, pins: enrollment.state.trust?.apiPins, timeoutMs: options.timeoutMs,
  };
  const grant = await callWithCapabilities<CertificateGrantWire>(options.api, api, 'POST', '/v1/renew', request);
  checkGrant(grant, enrollment.key.publicKey);
  if (grant.deviceId !== enrollment.state.deviceId) throw new AgentError('GRANT_INVALID', 'the broker renewed another device');
  const trust = trustOfGrant(grant, enrollment.state.trust);
  await writeGrant(enrollment.paths, grant, options.broker, {
    enrolledAt: enrollment.state.enrolledAt, renewedAt: options.now.toISOString(), trust: trust.trust,
  });
  return { grant, trust };
}
