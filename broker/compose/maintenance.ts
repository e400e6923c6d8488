/**
 * Periodic housekeeping while the broker runs: forget renewal nonces that can
 * no longer be replayed (their timestamp window has passed), drop expired
 * serials from the KRL (an expired certificate needs no revocation entry),
 * forget certificate rows long expired and audit rows of old failures; and
 * write the counts of aggregated failures (startAuditFlush). More often,
 * the reconciliation of revocations: rebuild the revocation list from the
 * store and end every live session it denies, whatever a hook after a
 * commit may have missed (DESIGN: a periodic reconciliation closes anything
 * the store says is revoked).
 */
import type { FailureAggregator } from '../core/failure-audit.js';
import type { Logger } from '../telemetry/logger.js';
import type { RevocationList } from './revocation-list.js';
import type { SshSide } from './ssh-side.js';
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

/** Runs JOB every INTERVALMS, never two at once; the returned function stops it. The timer never keeps the process alive. */
function startPeriodic(intervalMs: number, job: () => Promise<unknown>, onError: (err: unknown) => void): () => void {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    job()
      .catch(onError)
      .finally(() => {
        running = false;
      });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Starts the maintenance timer; the returned function stops it. */
export function startMaintenance(o: MaintenanceOptions): () => void {
  return startPeriodic(
    o.intervalMs ?? 10 * 60_000,
    async () => o.logger.debug({ pruned: await runMaintenance(o) }, 'maintenance done'),
    (err) => o.logger.error({ err }, 'maintenance failed'),
  );
}

export interface ReconciliationOptions {
  readonly revocations: RevocationList;
  readonly ssh: Pick<SshSide, 'reconcile'>;
  readonly logger: Logger;
  readonly intervalMs: number;
}

/** One pass: the revocation list from the store (and the KRL written), then the live sessions it denies ended; returns how many. */
export async function reconcileRevocations(o: Pick<ReconciliationOptions, 'revocations' | 'ssh' | 'logger'>): Promise<number> {
  await o.revocations.refresh();
  const ended = await o.ssh.reconcile(o.revocations);
  if (ended > 0) o.logger.warn({ ended }, 'reconciliation ended live sessions of revoked devices or certificates');
  return ended;
}

/** Starts the reconciliation timer; the returned function stops it. */
export function startReconciliation(o: ReconciliationOptions): () => void {
  return startPeriodic(o.intervalMs, () => reconcileRevocations(o), (err) => o.logger.error({ err }, 'reconciliation of revocations failed'));
}
