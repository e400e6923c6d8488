/**
 * Periodic housekeeping while the broker runs: forget renewal nonces that can
 * no longer be replayed (their timestamp window has passed), drop expired
 * serials from the KRL (an expired certificate needs no revocation entry),
 * and forget certificate rows long expired.
 */
import type { Logger } from '../telemetry/logger.js';
import type { RevocationList } from './revocation-list.js';
import type { Store } from '../store/types.js';

export interface MaintenanceOptions {
  readonly store: Store;
  readonly revocations: RevocationList;
  readonly clock: () => Date;
  readonly logger: Logger;
  readonly intervalMs?: number;
  /** Certificate rows are kept this long after expiry (audit and renewal grace need them). */
  readonly keepExpiredCertificatesMs: number;
}

export async function runMaintenance(o: MaintenanceOptions): Promise<{ nonces: number; certificates: number }> {
  const now = o.clock();
  const nonces = await o.store.pruneNonces(now);
  const certificates = await o.store.pruneCertificates(new Date(now.getTime() - o.keepExpiredCertificatesMs));
  await o.revocations.refresh();
  return { nonces, certificates };
}

/** Starts the timer; the returned function stops it. The timer never keeps the process alive. */
export function startMaintenance(o: MaintenanceOptions): () => void {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    runMaintenance(o)
      .then((pruned) => o.logger.debug({ pruned }, 'maintenance done'))
      .catch((err: unknown) => o.logger.error({ err }, 'maintenance failed'))
      .finally(() => {
        running = false;
      });
  }, o.intervalMs ?? 10 * 60_000);
  timer.unref();
  return () => clearInterval(timer);
}
