/**
 * Periodic housekeeping while the broker runs: forget renewal nonces that can
 * no longer be replayed (their timestamp window has passed), drop expired
 * serials from the KRL (an expired certificate needs no revocation entry),
 * forget certificate rows long expired and audit rows of old failures; and
 * write the counts of aggregated failures (startAuditFlush).
 */
import type { FailureAggregator } from '../core/failure-audit.js';
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
  /** Audit rows of refusals and failures are kept this long (audit.failureRetentionDays); unset: forever. */
  readonly keepAuditFailuresMs?: number;
}

export async function runMaintenance(o: MaintenanceOptions): Promise<{ nonces: number; certificates: number; auditFailures: number }> {
  const now = o.clock();
  const nonces = await o.store.pruneNonces(now);
  const certificates = await o.store.pruneCertificates(new Date(now.getTime() - o.keepExpiredCertificatesMs));
  const auditFailures = o.keepAuditFailuresMs === undefined ? 0 : await o.store.pruneAuditFailures(new Date(now.getTime() - o.keepAuditFailuresMs));
  await o.revocations.refresh();
  return { nonces, certificates, auditFailures };
}

/**
 * Writes the counts of FailureAggregator windows that have ended, every
 * WINDOWMS; the returned function stops it and writes every open count.
 */
export function startAuditFlush(aggregator: FailureAggregator, o: { clock: () => Date; logger: Logger; windowMs: number }): () => Promise<void> {
  const timer = setInterval(() => {
    aggregator.flush(o.clock()).catch((err: unknown) => o.logger.error({ err }, 'audit aggregation flush failed'));
  }, o.windowMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await aggregator.flush(null);
  };
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
