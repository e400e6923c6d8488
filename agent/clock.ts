/**
 * Time as the agent sees it: an injected clock (tests move it by hand
 * instead of sleeping), and the one sleep of the run loop, which stop() or
 * a finished background renewal may cut short.
 */

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** setTimeout's limit; longer timers are re-armed when they fire. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Sleep {
  readonly promise: Promise<void>;
  cancel(): void;
}

/**
 * One sleeper at a time, which anyone may wake: the run loop sleeps in
 * backoff and while the tunnel is up, and is woken to act at once when
 * there is something to act on (a stop, a verdict, a fresh certificate).
 */
export class WakeableSleep {
  #wake: () => void = () => undefined;

  constructor(private readonly clock: Clock) {}

  /** Resolves after MS (or never, without MS), or as soon as wake() is called. */
  sleep(ms?: number): Sleep {
    let timer: unknown = null;
    let done!: () => void;
    const promise = new Promise<void>((resolve) => {
      done = resolve;
    });
    this.#wake = done;
    if (ms !== undefined) timer = this.clock.setTimeout(done, ms);
    return {
      promise,
      cancel: () => {
        this.clock.clearTimeout(timer);
        if (this.#wake === done) this.#wake = () => undefined;
      },
    };
  }

  /** Ends the current sleep now; nothing happens when nobody sleeps. */
  wake(): void {
    this.#wake();
  }
}
