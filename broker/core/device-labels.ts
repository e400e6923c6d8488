/**
 * Labels are the operators' own notes on a device (site, stage, owner): a
 * person replaces them all at once, and the audit trail keeps what they were
 * and what they became. The label shape (keys, sizes, count) is checked at
 * the edge (broker/http/schemas.ts).
 */
import type { Labels } from '../store/types.js';
import type { Actor, CoreDeps } from './deps.js';
import { BrokerError } from './errors.js';
import { findDeviceByRef } from './revoke.js';

export async function setDeviceLabels(deps: Pick<CoreDeps, 'store' | 'clock'>, ref: string, labels: Labels, actor: Actor): Promise<string> {
  const device = await findDeviceByRef(deps, ref);
  const now = deps.clock();
  await deps.store.transaction(async (tx) => {
    if (!(await tx.setDeviceLabels(device.id, labels))) throw new BrokerError('DEVICE_UNKNOWN', 'no such device');
    await tx.appendAudit({
      at: now, actor: actor.id, action: 'device.labels', target: device.id, remoteAddr: actor.remoteAddr, outcome: 'ok',
      details: { name: device.name, before: device.labels, after: labels },
    });
  });
  return device.id;
}
