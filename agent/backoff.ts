/**
 * Reconnect backoff: exponential with full jitter and a cap, as a pure
 * function (got's calculateRetryDelay; "full jitter" from the AWS
 * architecture blog's "Exponential Backoff And Jitter"): the delay before
 * attempt N is uniform in [min, min(cap, base * factor^N)]. Full jitter is
 * what spreads a fleet that lost its broker at the same instant: without it,
 * every device comes back at the same few instants and the broker sees the
 * whole fleet at once, again and again.
 */

export interface BackoffOptions {
  /** Upper bound of the first delay (attempt 0), ms. */
  readonly baseMs: number;
  /** No delay is ever longer than this, ms. */
  readonly capMs: number;
  /** Growth of the upper bound per attempt; default 2. */
  readonly factor?: number;
  /** No delay is shorter than this (avoids hot loops when random() is near 0), ms; default 0. */
  readonly minMs?: number;
}

/**
 * Delay in ms before retry number ATTEMPT (0 for the first retry after a
 * failure). RANDOM returns a number in [0, 1), like Math.random.
 */
export function nextDelay(attempt: number, opts: BackoffOptions, random: () => number): number {
  const factor = opts.factor ?? 2;
  const min = Math.max(0, opts.minMs ?? 0);
  const cap = Math.max(min, opts.capMs);
  const n = Math.max(0, Math.floor(Number.isFinite(attempt) ? attempt : 0));
  // base * factor^n overflows to Infinity for large n; min() keeps it at the cap.
  const ceiling = Math.min(cap, Math.max(min, opts.baseMs * factor ** n));
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(min + r * (ceiling - min));
}

/** The largest delay nextDelay can return for ATTEMPT: what a test or an operator can count on. */
export function delayBound(attempt: number, opts: BackoffOptions): number {
  return nextDelay(attempt, opts, () => 1);
}
