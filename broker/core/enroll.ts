/**
 * Enrollment: a single-use token and a device public key become a device, a
 * port block and a certificate — all in one transaction, so a failed
 * enrollment consumes nothing and creates nothing. The token is redeemed
 * with one conditional UPDATE (never read-then-write).
 *
 * Retry: the same token with the same device key again, within
 * tokens.enrollRetrySeconds of its first use, answers that device's grant
 * again (a fresh certificate, the same id and ports) — the first answer may
 * have been lost, or the device may have lost power before saving it. The
 * certificate is only good to whoever holds the device's private key, so
 * the retry hands out nothing new; any other key gets TOKEN_USED.
 */
import { fingerprint, formatPublicKey, isCaError, parsePublicKey, type PortBlock, type PublicKey } from '../../ca/index.js';
import { BrokerError } from './errors.js';
import type { DeviceRecord, StoreTx, TokenRecord } from '../store/types.js';
import type { CertificateGrantWire, EnrollRequest } from '../../api/index.js';
import type { Actor, CoreDeps } from './deps.js';
import { failureSink, withFailureAudit, type FailureAuditRow } from './failure-audit.js';
import { issueDeviceCertificate } from './grant.js';
import { hashSecret, newId } from './secrets.js';

export function parseDeviceKey(line: string): PublicKey {
  try {
    return parsePublicKey(line);
  } catch (err) {
    if (isCaError(err, 'KEY_UNSUPPORTED')) throw new BrokerError('KEY_UNSUPPORTED', err.message);
    throw new BrokerError('KEY_INVALID', 'publicKey is not an OpenSSH Ed25519 public key line');
  }
}

/** Why a token could not be redeemed, from its row (read after the conditional update failed). */
function explainToken(token: TokenRecord | null, now: Date): BrokerError {
  if (!token) return new BrokerError('TOKEN_UNKNOWN', 'the enrollment token is not known');
  if (token.usedAt) return new BrokerError('TOKEN_USED', 'the enrollment token has already been used');
  if (token.revokedAt) return new BrokerError('TOKEN_REVOKED', 'the enrollment token has been revoked');
  if (token.expiresAt <= now) return new BrokerError('TOKEN_EXPIRED', 'the enrollment token has expired');
  return new BrokerError('TOKEN_UNKNOWN', 'the enrollment token cannot be used');
}

function checkBinding(token: TokenRecord, req: EnrollRequest): void {
  if (token.bindName !== null && req.name !== undefined && req.name !== token.bindName) {
    throw new BrokerError('TOKEN_BINDING_MISMATCH', 'the token is bound to another device name');
  }
  if (token.bindSerial !== null && req.hardwareSerial !== token.bindSerial) {
    throw new BrokerError('TOKEN_BINDING_MISMATCH', 'the token is bound to another hardware serial');
  }
}

/** What one enrollment request has in hand inside its transaction. */
interface EnrollContext {
  readonly deps: CoreDeps;
  readonly tx: StoreTx;
  readonly token: TokenRecord;
  readonly publicKey: PublicKey;
  readonly now: Date;
  readonly actor: Pick<Actor, 'remoteAddr'>;
  /** The request's AGENT_CAPABILITIES values. */
  readonly capabilities: readonly string[];
}

/** DEVICE's certificate for BLOCK, audited as its enrollment (RETRY: the same token and key again). */
function grantEnrollment(c: EnrollContext, device: Pick<DeviceRecord, 'id' | 'name' | 'keyFingerprint'>, block: PortBlock, serial: bigint, retry: boolean): Promise<CertificateGrantWire> {
  return issueDeviceCertificate(c.deps, c.tx, device, c.publicKey, block, c.now, {
    serial,
    capabilities: c.capabilities,
    audit: (g) => ({
      at: c.now, actor: `token:${c.token.id}`, action: 'device.enroll', target: device.id, remoteAddr: c.actor.remoteAddr, outcome: 'ok',
      details: { name: device.name, ports: `${block.first}-${block.last}`, serial: g.serial, fingerprint: device.keyFingerprint, ...(retry ? { retry: true } : {}) },
    }),
  });
}

/** The grant again for a retried enrollment (see above), or null when this is not one. */
async function retryGrant(c: EnrollContext, req: EnrollRequest, keyFingerprint: string): Promise<CertificateGrantWire | null> {
  const { token } = c;
  if (!token.usedAt || !token.usedByDevice || token.revokedAt) return null;
  if (c.now.getTime() - token.usedAt.getTime() > c.deps.config.tokens.enrollRetrySeconds * 1000) return null;
  const device = await c.tx.findDevice(token.usedByDevice);
  if (!device || device.status !== 'active' || device.keyFingerprint !== keyFingerprint || device.portFirst === null || device.portLast === null) return null;
  if ((req.name !== undefined && req.name !== device.name) || (req.hardwareSerial ?? null) !== device.hardwareSerial) return null;
  return grantEnrollment(c, device, { first: device.portFirst, last: device.portLast }, await c.tx.nextSerial(), true);
}

export async function enrollDevice(deps: CoreDeps, req: EnrollRequest, actor: Pick<Actor, 'remoteAddr'>): Promise<CertificateGrantWire> {
  const now = deps.clock();
  const tokenHash = hashSecret(req.token);
  let tokenId: string | null = null;
  const failure = (): FailureAuditRow => ({
    at: now, actor: tokenId ? `token:${tokenId}` : 'anonymous', action: 'device.enroll', target: null, remoteAddr: actor.remoteAddr,
  });
  return withFailureAudit(failureSink(deps), failure, async () => {
    const publicKey = parseDeviceKey(req.publicKey);
    const keyFingerprint = fingerprint(publicKey);
    return deps.store.transaction(async (tx) => {
      const token = await tx.findTokenByHash(tokenHash);
      tokenId = token?.id ?? null;
      if (!token) throw explainToken(null, now);
      checkBinding(token, req);
      const deviceId = newId('dev');
      const context: EnrollContext = { deps, tx, token, publicKey, now, actor, capabilities: req.capabilities ?? [] };
      if (!(await tx.redeemToken(tokenHash, deviceId, now))) {
        const retried = await retryGrant(context, req, keyFingerprint);
        if (retried) return retried;
        throw explainToken(token, now);
      }
      const name = req.name ?? token.bindName;
      await tx.insertDevice({
        id: deviceId,
        name,
        hardwareSerial: req.hardwareSerial ?? null,
        publicKey: formatPublicKey(publicKey),
        keyFingerprint,
        labels: token.batch ? { batch: token.batch } : {},
        tokenId: token.id,
        createdAt: now,
      });
      const [block, serial] = await Promise.all([
        tx.allocatePortBlock(deviceId, deps.config.ports, now),
        tx.nextSerial(),
      ]);
      return grantEnrollment(context, { id: deviceId, name, keyFingerprint }, block, serial, false);
    });
  });
}
