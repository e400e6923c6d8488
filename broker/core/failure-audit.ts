/**
 * Every refused enrollment, renewal and operator certificate is an audit
 * event (DESIGN: "Audit"), written outside the transaction that the failure
 * rolled back. One helper, so that the three rules record refusals alike.
 */
import { BrokerError } from './errors.js';
import type { NewAuditEvent, Store } from '../store/types.js';

/** The audit row of a failure, all but its outcome (the error's code). */
export type FailureAuditRow = Omit<NewAuditEvent, 'outcome'>;

/**
 * Runs FN; when it throws, records ROW() with the error's code as the
 * outcome (INTERNAL for an error without one) and rethrows. ROW is called
 * only then, so it may name what FN had found by the time it failed. The
 * audit write is best effort: its own failure never hides FN's.
 */
export async function withFailureAudit<T>(store: Pick<Store, 'appendAudit'>, row: () => FailureAuditRow, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const outcome = err instanceof BrokerError ? err.code : 'INTERNAL';
    await store.appendAudit({ ...row(), outcome }).catch(() => undefined);
    throw err;
  }
}
