/**
 * Revocation: mark the device revoked, revoke its certificates, start the
 * quarantine of its port block, record who did it — in one transaction —
 * then (after commit) let the hooks deny the device in memory, close its
 * live sessions and rewrite the KRL. Revoking a revoked device changes
 * nothing in the store and says so, but runs the hooks again: if the
 * effects after the first commit were cut short (a crash, a failing disk),
 * revoking again re-applies them (DESIGN: revocation does not depend on
 * I/O succeeding).
 */
import { BrokerError } from './errors.js';
import type { DeviceRecord } from '../store/types.js';
import type { Actor, CoreDeps } from './deps.js';

export interface RevokeResult {
  device: DeviceRecord;
  alreadyRevoked: boolean;
  certificatesRevoked: number;
}

/** Finds a device by id or, failing that, by name. */
export async function findDeviceByRef(deps: Pick<CoreDeps, 'store'>, ref: string): Promise<DeviceRecord> {
  const device = (await deps.store.findDevice(ref)) ?? (await deps.store.findDeviceByName(ref));
  if (!device) throw new BrokerError('DEVICE_UNKNOWN', 'no such device');
  return device;
}

export async function revokeDevice(deps: CoreDeps, ref: string, reason: string | null, actor: Actor): Promise<RevokeResult> {
  const now = deps.clock();
  const device = await findDeviceByRef(deps, ref);
  const outcome = await deps.store.transaction(async (tx) => {
    if (!(await tx.markDeviceRevoked(device.id, actor.id, reason, now))) return { changed: false, certificates: 0 };
    const certificates = await tx.revokeCertificatesOfDevice(device.id, now);
    await tx.releasePortBlock(device.id, { quarantineUntil: now, now });
    await tx.appendAudit({
      at: now, actor: actor.id, action: 'device.revoke', target: device.id, remoteAddr: actor.remoteAddr, outcome: 'ok',
      details: { reason, certificatesRevoked: certificates },
    });
    return { changed: true, certificates };
  });
  await deps.hooks.deviceRevoked(device.id);
  const after = (await deps.store.findDevice(device.id))!;
  return { device: after, alreadyRevoked: !outcome.changed, certificatesRevoked: outcome.certificates };
}
