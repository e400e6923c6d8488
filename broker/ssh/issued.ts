/**
 * Defence in depth at login: a certificate whose CA signature, validity and
 * profile limits authorize.ts accepted must also be one the broker issued.
 * The CA key alone cannot say so: whoever holds its signature (a stolen key,
 * a CA bug) could present a serial the broker never handed out, or a real
 * serial re-signed with another device's key id or port block, and bind
 * that device's ports. The store recorded every certificate it issued
 * (serial, kind, device, key fingerprint, key id, principal, validity), so
 * the gateway compares the certificate presented with that record and with
 * the device as it is now. A pure decision; the lookup is the caller's
 * (handle-userauth.ts), and a lookup that fails refuses the login there
 * (INTERNAL_ERROR: fail closed).
 *
 * Operator certificates are recorded too (broker/core/operator-certificate.ts,
 * kind operator, the device they reach): they are checked the same way.
 */
import { fingerprint, type PortBlock } from '../../ca/index.js';
import type { Decision, Identity } from './authorize.js';

export type IssuedRefusal =
  /** No certificate with this serial was issued (or it expired long ago and was pruned). */
  | 'SERIAL_UNKNOWN'
  /** The serial was issued, but for another kind, device, key or key id. */
  | 'SERIAL_OTHER_DEVICE'
  /** The serial was issued with another validity window: a re-signed certificate. */
  | 'VALIDITY_NOT_AS_ISSUED'
  /** The principal is not the one issued under this serial, or the block is no longer the device's. */
  | 'BLOCK_NOT_CURRENT'
  /** The store revoked this serial (the in-memory list may lag, e.g. on another node). */
  | 'SERIAL_REVOKED'
  /** The device it names is revoked or gone. */
  | 'DEVICE_NOT_ACTIVE';

/**
 * What the store recorded for one serial, and the device it names as that
 * device is now (broker/store's IssuedCertificateRecord has this shape).
 */
export interface IssuedCertificate {
  readonly certificate: {
    readonly kind: 'device' | 'operator';
    /** The device certificate's device, or the device an operator certificate reaches. */
    readonly deviceId: string | null;
    readonly keyFingerprint: string;
    readonly keyId: string;
    readonly principal: string;
    readonly validAfter: Date;
    readonly validBefore: Date;
    readonly revokedAt: Date | null;
  };
  readonly device: {
    readonly id: string;
    readonly status: string;
    readonly portFirst: number | null;
    readonly portLast: number | null;
  } | null;
}

/** The store's record of SERIAL, or null when it has none; may reject (the gateway refuses then). */
export type LookupIssued = (serial: bigint) => Promise<IssuedCertificate | null>;

const ALLOW = Object.freeze({ allow: true as const });

function deny(reason: IssuedRefusal): Decision<IssuedRefusal> {
  return { allow: false, reason };
}

const sameBlock = (block: PortBlock, first: number | null, last: number | null): boolean => block.first === first && block.last === last;

/** Seconds since the epoch (PROTOCOL.certkeys) against the store's Date, which holds the same instant in ms. */
const sameInstant = (seconds: bigint, date: Date): boolean => BigInt(date.getTime()) === seconds * 1000n;

/**
 * May IDENTITY (a certificate authorize.ts accepted) log in, given what the
 * store recorded under its serial? Who it was issued to first, then whether
 * it is exactly that certificate, then the state of the serial and device.
 */
export function checkIssued(identity: Identity, issued: IssuedCertificate | null): Decision<IssuedRefusal> {
  if (!issued) return deny('SERIAL_UNKNOWN');
  const { certificate: cert, device } = issued;
  if (
    cert.kind !== identity.role ||
    cert.deviceId !== identity.deviceId ||
    cert.keyId !== identity.keyId ||
    cert.keyFingerprint !== fingerprint(identity.publicKey)
  ) {
    return deny('SERIAL_OTHER_DEVICE');
  }
  if (cert.principal !== identity.principal) return deny('BLOCK_NOT_CURRENT');
  if (!sameInstant(identity.validAfter, cert.validAfter) || !sameInstant(identity.validBefore, cert.validBefore)) {
    return deny('VALIDITY_NOT_AS_ISSUED');
  }
  if (cert.revokedAt !== null) return deny('SERIAL_REVOKED');
  if (!device || device.id !== cert.deviceId || device.status !== 'active') return deny('DEVICE_NOT_ACTIVE');
  // The block the device holds now: a certificate for a block it held once (if blocks ever move) gets nothing.
  if (!sameBlock(identity.block, device.portFirst, device.portLast)) return deny('BLOCK_NOT_CURRENT');
  return ALLOW;
}
