/**
 * The shape of one ssh-bench run: how much each phase measures (a full run,
 * or --quick), the port pool and which of its blocks each phase uses, and
 * the deadlines that bound the run.
 */
import type { PortBlock } from '../../../ca/index.js';

/** Below the ephemeral range (32768-60999 here) and above the broker's default pool (20000-29999). */
export const POOL = { first: 30000, last: 32767, perDevice: 2 };
export const HANDSHAKE_CONCURRENCY = 4;
/** Idle tunnels connecting at once. */
export const IDLE_WAVE = 50;
/** Blocks below this one belong to the lanes (2 x (2 + handshakes)); the idle phase, one target at a time, uses those above. */
export const IDLE_FIRST_BLOCK = 250;
export const TOTAL_DEADLINE_MS = 15 * 60_000;
export const PHASE_DEADLINE_MS = 5 * 60_000;

/** How much each phase measures. */
export interface Sizes {
  /** Bytes of one transfer, each way. */
  readonly throughputBytes: number;
  /** Transfers per direction and target; the median is reported. */
  readonly throughputRuns: number;
  readonly latencyRoundTrips: number;
  /** Full connects per target. */
  readonly handshakes: number;
  /** Idle tunnels at which memory is read. */
  readonly idleSteps: readonly number[];
}

export function sizesFor(quick: boolean): Sizes {
  return {
    throughputBytes: (quick ? 64 : 256) * 1024 * 1024,
    throughputRuns: quick ? 1 : 3,
    latencyRoundTrips: quick ? 500 : 3000,
    handshakes: quick ? 20 : 100,
    idleSteps: quick ? [50, 200] : [200, 1000],
  };
}

/** The I-th block of the pool. */
export function blockAt(i: number): PortBlock {
  const first = POOL.first + i * POOL.perDevice;
  if (first + POOL.perDevice - 1 > POOL.last) throw new Error('bench pool exhausted');
  return { first, last: first + POOL.perDevice - 1 };
}
