/**
 * Renewal: the device proves possession of its enrolled key with an SSHSIG
 * signature (namespace certunnel-renew) over renewMessage(), which carries a
 * timestamp and a nonce for replay protection. Allowed before expiry and
 * within a grace period after it, for the same key; key rotation is a renewal
 * that also carries the new key, signed by both keys. A rotation revokes the
 * old key's certificates in the same transaction (a key the device gave up
 * may be a leaked one), and after the commit the hook denies their serials
 * and ends the sessions that used them: the device's new session, made with
 * the new certificate, is never among them.
 */
import { fingerprint, formatPublicKey, isCaError, parsePublicKey, verifySshsig, type PublicKey } from '../../ca/index.js';
import { BrokerError } from './errors.js';
import type { DeviceRecord } from '../store/types.js';
import { type CertificateGrantWire, RENEW_NAMESPACE, renewMessage, type RenewRequest } from '../../api/index.js';
import type { Actor, CoreDeps } from './deps.js';
import { parseDeviceKey } from './enroll.js';
import { failureSink, withFailureAudit, type FailureAuditRow } from './failure-audit.js';
import { recordDeviceCertificate, signDeviceCertificate } from './grant.js';

function verifySignedBy(signature: string, message: string, key: PublicKey): void {
  try {
    verifySshsig(signature, message, RENEW_NAMESPACE, key);
  } catch (err) {
    if (isCaError(err)) throw new BrokerError('SIGNATURE_INVALID', `renewal signature refused (${err.code})`);
    throw err;
  }
}

function checkActiveDevice(device: DeviceRecord | undefined): DeviceRecord {
  if (!device) throw new BrokerError('DEVICE_UNKNOWN', 'no such device');
  if (device.status === 'revoked') throw new BrokerError('DEVICE_REVOKED', 'the device has been revoked');
  if (device.portFirst === null || device.portLast === null) throw new BrokerError('INTERNAL', 'device has no port block');
  return device;
}

/** What a valid renewal request establishes before anything is written: the device, its current key, the new one when rotating. */
interface CheckedRenewal {
  readonly device: DeviceRecord;
  readonly currentKey: PublicKey;
  readonly newKey: PublicKey | undefined;
}

/** The request's checks, in order: device, clock skew, signatures, grace period. Throws the first refusal. */
async function checkRenewal(deps: CoreDeps, req: RenewRequest, now: Date): Promise<CheckedRenewal> {
  const found = await deps.store.findDeviceWithLatestCertificate(req.deviceId);
  const device = checkActiveDevice(found?.device);
  const latest = found?.latest ?? null;
  const skew = Math.abs(now.getTime() / 1000 - req.timestamp);
  if (skew > deps.config.renew.maxSkewSeconds) {
    throw new BrokerError('REQUEST_STALE', `request timestamp is ${Math.round(skew)} s away from the broker's clock`);
  }
  const message = renewMessage(req);
  const currentKey = parsePublicKey(device.publicKey);
  verifySignedBy(req.signature, message, currentKey);

  let newKey: PublicKey | undefined;
  if (req.newPublicKey !== undefined) {
    newKey = parseDeviceKey(req.newPublicKey);
    if (!req.newKeySignature) throw new BrokerError('BAD_REQUEST', 'key rotation needs newKeySignature by the new key');
    verifySignedBy(req.newKeySignature, message, newKey);
  } else if (req.newKeySignature !== undefined) {
    throw new BrokerError('BAD_REQUEST', 'newKeySignature without newPublicKey');
  }

  const graceEnd = latest ? latest.validBefore.getTime() + deps.config.certs.renewGraceSeconds * 1000 : 0;
  if (!latest || latest.keyFingerprint !== device.keyFingerprint || now.getTime() > graceEnd) {
    throw new BrokerError('RENEWAL_GRACE_EXCEEDED', 'the last certificate expired longer ago than the grace period; re-enroll the device');
  }
  return { device, currentKey, newKey };
}

export async function renewDevice(deps: CoreDeps, req: RenewRequest, actor: Pick<Actor, 'remoteAddr'>): Promise<CertificateGrantWire> {
  const now = deps.clock();
  const failure = (): FailureAuditRow => ({ at: now, actor: `device:${req.deviceId}`, action: 'device.renew', target: req.deviceId, remoteAddr: actor.remoteAddr });
  return withFailureAudit(failureSink(deps), failure, async () => {
    const checked = await checkRenewal(deps, req, now);
    const { grant, oldSerials } = await commitRenewal(deps, req, checked, actor, now);
    if (oldSerials.length > 0) await deps.hooks.certificatesRevoked(checked.device.id, oldSerials);
    return grant;
  });
}

/** Signs and records the new certificate; when rotating, switches the key and revokes the old key's certificates. */
async function commitRenewal(
  deps: CoreDeps,
  req: RenewRequest,
  { device, currentKey, newKey }: CheckedRenewal,
  actor: Pick<Actor, 'remoteAddr'>,
  now: Date,
): Promise<{ grant: CertificateGrantWire; oldSerials: bigint[] }> {
  return deps.store.transaction(async (tx) => {
    // Serial, key and signature first, then every statement at once (one
    // round trip to the store instead of two): the checks below throw if
    // the request or the device do not allow the renewal, and the throw
    // rolls the writes back.
    let key = currentKey;
    let keyFingerprint = device.keyFingerprint;
    if (newKey) {
      key = newKey;
      keyFingerprint = fingerprint(newKey);
    }
    const block = { first: device.portFirst!, last: device.portLast! };
    const signed = signDeviceCertificate(deps, { id: device.id, name: device.name, keyFingerprint }, key, block, now, await tx.nextSerial(), req.capabilities);
    const nonceExpiry = new Date(now.getTime() + 2 * deps.config.renew.maxSkewSeconds * 1000);
    const [fresh, again] = await Promise.all([
      tx.insertNonce(`${device.id}:${req.nonce}`, device.id, nonceExpiry),
      tx.findDevice(device.id),
      recordDeviceCertificate(tx, signed, {
        at: now, actor: `device:${device.id}`, action: newKey ? 'device.rotate' : 'device.renew', target: device.id,
        remoteAddr: actor.remoteAddr, outcome: 'ok', details: { serial: signed.grant.serial, fingerprint: keyFingerprint },
      }),
    ]);
    if (!fresh) throw new BrokerError('REQUEST_REPLAYED', 'this renewal request was already used');
    // Re-read inside the transaction: a revocation, or a key rotation, may have committed since the first read.
    if (!again || again.status !== 'active') throw new BrokerError('DEVICE_REVOKED', 'the device has been revoked');
    if (again.keyFingerprint !== device.keyFingerprint) {
      throw new BrokerError('SIGNATURE_INVALID', 'the device key changed since this request was signed');
    }
    if (!newKey) return { grant: signed.grant, oldSerials: [] };
    if (!(await tx.updateDeviceKey(device.id, formatPublicKey(newKey), keyFingerprint))) {
      throw new BrokerError('DEVICE_REVOKED', 'the device has been revoked');
    }
    return { grant: signed.grant, oldSerials: await tx.revokeCertificatesOfKey(device.id, device.keyFingerprint, now) };
  });
}
