/**
 * Every refused enrollment, renewal and operator certificate is an audit
 * event (DESIGN: "Audit"), written outside the transaction that the failure
 * rolled back. One helper, so that the three rules record refusals alike.
 *
 * Strangers can fail as often as they like, so repeats are aggregated
 * (FailureAggregator): the first failure of an (action, outcome, client
 * address) in a window is written as it is, later ones in that window are
 * counted, and the count becomes one row when the window has passed.
 */
import { BrokerError } from './errors.js';
import type { NewAuditEvent, Store } from '../store/types.js';

/** The audit row of a failure, all but its outcome (the error's code). */
export type FailureAuditRow = Omit<NewAuditEvent, 'outcome'>;

/** Where failure rows go: the store, or a FailureAggregator in front of it. */
export type AuditSink = Pick<Store, 'appendAudit'>;

/** The sink for failure rows: the aggregator when the broker has one, else the store itself. */
export function failureSink(deps: { readonly store: AuditSink; readonly failureAudit?: AuditSink }): AuditSink {
  return deps.failureAudit ?? deps.store;
}

/**
 * Runs FN; when it throws, records ROW() with the error's code as the
 * outcome (INTERNAL for an error without one) and rethrows. ROW is called
 * only then, so it may name what FN had found by the time it failed. The
 * audit write is best effort: its own failure never hides FN's.
 */
export async function withFailureAudit<T>(sink: AuditSink, row: () => FailureAuditRow, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const outcome = err instanceof BrokerError ? err.code : 'INTERNAL';
    await sink.appendAudit({ ...row(), outcome }).catch(() => undefined);
    throw err;
  }
}

interface OpenWindow {
  readonly first: NewAuditEvent;
  /** Milliseconds (the rows' clock) when the window ends. */
  readonly until: number;
  repeated: number;
}

/** Repeated failure rows as one row with a count per (action, outcome, client address) and window. */
export class FailureAggregator implements AuditSink {
  private readonly open = new Map<string, OpenWindow>();

  constructor(
    private readonly store: AuditSink,
    private readonly windowMs: number,
    /** Windows tracked at once; beyond it every open window is closed (its count written). */
    private readonly maxWindows = 10_000,
  ) {}

  async appendAudit(event: NewAuditEvent): Promise<void> {
    // Not the target: the client picks it (a path, a claimed device id), and would get a row per value.
    const key = `${event.action}\n${event.outcome}\n${event.remoteAddr ?? ''}`;
    const at = event.at.getTime();
    const window = this.open.get(key);
    if (window && at < window.until) {
      window.repeated += 1;
      return;
    }
    if (window) await this.close(key, window);
    if (this.open.size >= this.maxWindows) await this.flush(null);
    this.open.set(key, { first: event, until: at + this.windowMs, repeated: 0 });
    await this.store.appendAudit(event);
  }

  /** Writes the count of every window ended by NOW (null: of every window); returns the rows written. */
  async flush(now: Date | null): Promise<number> {
    let written = 0;
    for (const [key, window] of [...this.open]) {
      if (now !== null && window.until > now.getTime()) continue;
      if (await this.close(key, window)) written += 1;
    }
    return written;
  }

  private async close(key: string, window: OpenWindow): Promise<boolean> {
    this.open.delete(key);
    if (window.repeated === 0) return false;
    const { first } = window;
    await this.store.appendAudit({
      at: new Date(window.until), actor: 'anonymous', action: first.action, target: null, remoteAddr: first.remoteAddr, outcome: first.outcome,
      details: { repeated: window.repeated, since: first.at.toISOString(), windowSeconds: this.windowMs / 1000 },
    });
    return true;
  }
}
