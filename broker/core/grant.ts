/** Issuing a device certificate inside a store transaction: shared by enrollment and renewal. */
import { fingerprint, formatCertificate, signDeviceCert, type PublicKey } from '../../ca/index.js';
import type { DeviceRecord, NewAuditEvent, NewCertificate, PortBlock, StoreTx } from '../store/types.js';
import { AGENT_CAPABILITIES, type CertificateGrantWire } from '../../api/index.js';
import type { CoreDeps } from './deps.js';
import { sshGrantFields } from './ssh-endpoints.js';
import type { TrustSnapshot } from './trust-roots.js';

export interface IssueOptions {
  /** From tx.nextSerial(), started by the caller alongside its other statements. */
  readonly serial: bigint;
  /** The audit event recorded with the certificate, in the same transaction. */
  readonly audit: (grant: CertificateGrantWire) => NewAuditEvent;
  /** What the agent said it can do (the request's capabilities). */
  readonly capabilities?: readonly string[];
}

/** A signed device certificate: the grant for the device, the row for the store. */
export interface SignedDeviceCertificate {
  readonly grant: CertificateGrantWire;
  readonly record: NewCertificate;
}

/**
 * The rotation whose next trust this grant teaches the device: in learn,
 * to an agent that stores the trust set (AGENT_CAPABILITIES.trustSet);
 * the device then counts as having learned it (core/rotation.ts). Older
 * agents pin what the grant's `ssh` names and never count.
 */
function learnedRotation(trust: TrustSnapshot, capabilities: readonly string[]): number | null {
  return trust.rotation?.phase === 'learn' && capabilities.includes(AGENT_CAPABILITIES.trustSet) ? trust.rotation.id : null;
}

/** Signs the certificate (no store access). */
export function signDeviceCertificate(
  deps: CoreDeps,
  device: Pick<DeviceRecord, 'id' | 'name' | 'keyFingerprint'>,
  publicKey: PublicKey,
  block: PortBlock,
  now: Date,
  serial: bigint,
  capabilities: readonly string[] = [],
): SignedDeviceCertificate {
  const validitySeconds = deps.config.certs.deviceValiditySeconds;
  const trust = deps.trustRoots.current();
  const cert = signDeviceCert({ ca: trust.signingUserCa, publicKey, deviceId: device.id, ports: block, serial, now, validitySeconds });
  const validAfter = new Date(Number(cert.validAfter) * 1000);
  const validBefore = new Date(Number(cert.validBefore) * 1000);
  const renewAfter = new Date(now.getTime() + validitySeconds * 1000 * deps.config.certs.renewAtFraction);
  const grant: CertificateGrantWire = {
    deviceId: device.id,
    name: device.name,
    ports: { first: block.first, last: block.last },
    certificate: formatCertificate(cert, `device:${device.id}`),
    serial: serial.toString(),
    validAfter: validAfter.toISOString(),
    validBefore: validBefore.toISOString(),
    renewAfter: renewAfter.toISOString(),
    ...sshGrantFields(deps),
  };
  const record: NewCertificate = {
    serial, deviceId: device.id, kind: 'device', keyFingerprint: device.keyFingerprint, keyId: cert.keyId,
    principal: cert.principals[0]!, validAfter, validBefore, issuedAt: now,
    signedBy: fingerprint(trust.signingUserCa.publicKey), trustRotation: learnedRotation(trust, capabilities),
  };
  return { grant, record };
}

/**
 * Records the certificate and its audit event. The two writes are sent
 * together: the store's single connection pipelines them.
 */
export async function recordDeviceCertificate(tx: StoreTx, signed: SignedDeviceCertificate, audit: NewAuditEvent): Promise<void> {
  await Promise.all([tx.insertCertificate(signed.record), tx.appendAudit(audit)]);
}

/** Signs the certificate and records it and its audit event. */
export async function issueDeviceCertificate(
  deps: CoreDeps,
  tx: StoreTx,
  device: Pick<DeviceRecord, 'id' | 'name' | 'keyFingerprint'>,
  publicKey: PublicKey,
  block: PortBlock,
  now: Date,
  options: IssueOptions,
): Promise<CertificateGrantWire> {
  const signed = signDeviceCertificate(deps, device, publicKey, block, now, options.serial, options.capabilities);
  await recordDeviceCertificate(tx, signed, options.audit(signed.grant));
  return signed.grant;
}
