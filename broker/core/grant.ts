/** Issuing a device certificate inside a store transaction: shared by enrollment and renewal. */
import { formatCertificate, signDeviceCert, type PublicKey } from '../../ca/index.js';
import type { DeviceRecord, PortBlock, StoreTx } from '../store/types.js';
import type { CertificateGrantWire } from '../wire-types.js';
import type { CoreDeps } from './deps.js';

export async function issueDeviceCertificate(
  deps: CoreDeps,
  tx: StoreTx,
  device: Pick<DeviceRecord, 'id' | 'name' | 'keyFingerprint'>,
  publicKey: PublicKey,
  block: PortBlock,
  now: Date,
): Promise<CertificateGrantWire> {
  const serial = await tx.nextSerial();
  const validitySeconds = deps.config.certs.deviceValiditySeconds;
  const cert = signDeviceCert({ ca: deps.ca.userCa, publicKey, deviceId: device.id, ports: block, serial, now, validitySeconds });
  const validAfter = new Date(Number(cert.validAfter) * 1000);
  const validBefore = new Date(Number(cert.validBefore) * 1000);
  await tx.insertCertificate({
    serial,
    deviceId: device.id,
    kind: 'device',
    keyFingerprint: device.keyFingerprint,
    keyId: cert.keyId,
    principal: cert.principals[0]!,
    validAfter,
    validBefore,
    issuedAt: now,
  });
  const renewAfter = new Date(now.getTime() + validitySeconds * 1000 * deps.config.certs.renewAtFraction);
  return {
    deviceId: device.id,
    name: device.name,
    ports: { first: block.first, last: block.last },
    certificate: formatCertificate(cert, `device:${device.id}`),
    serial: serial.toString(),
    validAfter: validAfter.toISOString(),
    validBefore: validBefore.toISOString(),
    renewAfter: renewAfter.toISOString(),
    ssh: deps.ssh,
  };
}
