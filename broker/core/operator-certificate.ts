/**
 * Operator certificates: an API-key holder (operator or admin) gets a
 * certificate, minutes long, whose one principal reach-<first>-<last> lets
 * its key open connections to one device's ports through the broker's SSH
 * server, nothing else. Issued only for an active device, and with the
 * embedded gateway only while its tunnel is up (OpenSSH mode has no live
 * view per port: UNKNOWN_PRESENCE); recorded in the store (so that revoking the
 * device revokes it and its block stays quarantined until it expires) and
 * audited, refusals included.
 */
import { fingerprint, formatCertificate, signOperatorCert } from '../../ca/index.js';
import { OPERATOR_LOGIN, type OperatorCertificateRequest, type OperatorCertificateResponse } from '../../api/index.js';
import type { Actor, CoreDeps } from './deps.js';
import { parseDeviceKey } from './enroll.js';
import { findDeviceByRef } from './revoke.js';
import { BrokerError } from './errors.js';
import { failureSink, withFailureAudit, type FailureAuditRow } from './failure-audit.js';
import type { DeviceRecord } from '../store/types.js';
import { describeOffline, offlineSince, type TunnelPresence } from './presence.js';
import { presentedSshEndpoint } from './ssh-endpoints.js';

export interface OperatorCertificateDeps {
  readonly core: CoreDeps;
  readonly presence: TunnelPresence;
}

/** The device's block, or the reason an operator may not reach it. Pure. */
export function checkReachable(
  device: DeviceRecord,
  forwarded: readonly number[] | undefined,
): { first: number; last: number } {
  if (device.status === 'revoked') throw new BrokerError('DEVICE_REVOKED', `device ${device.name ?? device.id} has been revoked`);
  if (device.portFirst === null || device.portLast === null) throw new BrokerError('DEVICE_UNKNOWN', 'the device has no port block');
  // undefined: OpenSSH mode, which has no live view per port (UNKNOWN_PRESENCE); the store's online flag is not consulted.
  if (forwarded !== undefined && forwarded.length === 0) {
    throw new BrokerError('DEVICE_OFFLINE', `device ${device.name ?? device.id} is offline${describeOffline(offlineSince(device))}`);
  }
  return { first: device.portFirst, last: device.portLast };
}

export async function issueOperatorCertificate(
  deps: OperatorCertificateDeps,
  ref: string,
  req: OperatorCertificateRequest,
  actor: Actor,
): Promise<OperatorCertificateResponse> {
  const { core } = deps;
  const now = core.clock();
  let device: DeviceRecord | undefined;
  const failure = (): FailureAuditRow => ({
    at: now, actor: actor.id, action: 'operator.certificate', target: device?.id ?? null, remoteAddr: actor.remoteAddr,
    details: device ? { name: device.name } : { ref: ref.slice(0, 128) },
  });
  return withFailureAudit(failureSink(core), failure, async () => {
    device = await findDeviceByRef(core, ref);
    const publicKey = parseDeviceKey(req.publicKey);
    const forwarded = await deps.presence.forwardedPorts(device.id);
    const block = checkReachable(device, forwarded);
    const target = device;
    return core.store.transaction(async (tx) => {
      const serial = await tx.nextSerial();
      const signer = core.trustRoots.current().signingUserCa;
      const cert = signOperatorCert({
        ca: signer, publicKey, operator: actor.name ?? actor.id, deviceId: target.id, ports: block, serial, now,
        validityMinutes: core.config.certs.operatorValidityMinutes,
      });
      const validAfter = new Date(Number(cert.validAfter) * 1000);
      const validBefore = new Date(Number(cert.validBefore) * 1000);
      const principal = cert.principals[0]!;
      const keyFingerprint = fingerprint(publicKey);
      await Promise.all([
        tx.insertCertificate({
          serial, deviceId: target.id, kind: 'operator', keyFingerprint, keyId: cert.keyId, principal, validAfter, validBefore, issuedAt: now,
          signedBy: fingerprint(signer.publicKey),
        }),
        tx.appendAudit({
          at: now, actor: actor.id, action: 'operator.certificate', target: target.id, remoteAddr: actor.remoteAddr, outcome: 'ok',
          details: { name: target.name, operator: actor.name ?? null, serial: serial.toString(), keyId: cert.keyId, principal, fingerprint: keyFingerprint, validBefore: validBefore.toISOString() },
        }),
      ]);
      return {
        certificate: formatCertificate(cert, cert.keyId),
        serial: serial.toString(),
        principal,
        validAfter: validAfter.toISOString(),
        validBefore: validBefore.toISOString(),
        device: { id: target.id, name: target.name, ports: block, forwardedPorts: forwarded === undefined ? null : [...forwarded].sort((a, b) => a - b) },
        ssh: { ...presentedSshEndpoint(core), username: OPERATOR_LOGIN },
      };
    });
  });
}
