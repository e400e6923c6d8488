/**
 * Presence writes that land: the SSH side reports a device online or
 * offline as an event (the gateway cannot wait for the store), and this
 * queue makes sure the store ends up saying so even when it is saturated
 * (a login storm: SQLite's write queue wait runs out, PostgreSQL's pool is
 * exhausted) or away for a while (STORE_BUSY, STORE_UNAVAILABLE).
 *
 * - One pending update per device, the latest: online then offline before
 *   the write lands collapses into offline. A device has at most one write
 *   in flight, so its updates land in order, never an older after a newer.
 * - A handful of writes in flight (maxInFlight), so that a storm does not
 *   flood the store's queue with presence and starve the logins.
 * - A transient failure keeps the update (unless a newer one came) and
 *   retries it after a capped exponential backoff with jitter, for as long
 *   as the broker runs; any other error is logged and the update dropped.
 * - close() stops taking updates and writes what it can within a bound; what
 *   is left is corrected at the next start (ssh-side.ts marks every device
 *   this node held offline; a cluster node clears its presence).
 *
 * It calls the Store's setDeviceOnline as it is given (fleet-watch.ts's
 * announcing wrapper; the store's node conditions keep a takeover).
 */
import { BrokerError } from './errors.js';
import type { DevicePresence, Store } from '../store/types.js';

/** The store errors worth retrying: the store is busy or away, the update itself is fine. */
export function isTransientStoreError(err: unknown): boolean {
  return err instanceof BrokerError && (err.code === 'STORE_BUSY' || err.code === 'STORE_UNAVAILABLE');
}

export interface PresenceWriterLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** setTimeout and clearTimeout, injected so that tests run the backoff by hand. */
export interface WriterTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const NODE_TIMERS: WriterTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface PresenceWriterOptions {
  readonly store: Pick<Store, 'setDeviceOnline'>;
  readonly logger: PresenceWriterLogger;
  /** Writes in flight at most; default 4. */
  readonly maxInFlight?: number;
  /** The first retry's delay and the cap, in ms; default 250 ms doubling to 30 s. */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number };
  /** [0, 1) for the jitter; default Math.random. */
  readonly random?: () => number;
  readonly timers?: WriterTimers;
}

/** What the metrics read (telemetry/metrics.ts PresenceWriteStatsSource). */
export interface PresenceWriterStats {
  /** Devices whose latest update has not landed yet (queued, waiting for a retry, or in flight). */
  readonly pending: number;
  /** Writes retried after a transient failure, since start. */
  readonly retried: number;
  /** Updates given up: a permanent error, or left unwritten at close, since start. */
  readonly dropped: number;
}

/** Whether close() wrote everything, and how many devices' updates were left. */
export interface FlushResult {
  readonly flushed: boolean;
  readonly left: number;
}

export class PresenceWriter {
  /** Device → its latest update not yet handed to the store. */
  private readonly pending = new Map<string, DevicePresence>();
  /** Devices with a write in flight. */
  private readonly inFlight = new Set<string>();
  /** Devices whose pending update may be written now, oldest first. */
  private readonly ready = new Set<string>();
  /** Devices waiting for a retry → the backoff timer. */
  private readonly waiting = new Map<string, unknown>();
  /** Devices → transient failures in a row (reset when a write of theirs lands or is dropped). */
  private readonly failures = new Map<string, number>();
  private readonly counts = { retried: 0, dropped: 0 };
  /** Since the store last started failing: for the one line saying writes caught up. */
  private episode: { failedWrites: number; landedAfterRetry: number; firstCode: string } | undefined;
  private closing = false;
  private closed = false;
  private closeRun: Promise<FlushResult> | undefined;
  private idle: (() => void) | undefined;
  private readonly maxInFlight: number;
  private readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  private readonly random: () => number;
  private readonly timers: WriterTimers;

  constructor(private readonly o: PresenceWriterOptions) {
    this.maxInFlight = Math.max(1, o.maxInFlight ?? 4);
    this.backoff = o.backoff ?? { initialMs: 250, maxMs: 30_000 };
    this.random = o.random ?? Math.random;
    this.timers = o.timers ?? NODE_TIMERS;
  }

  stats(): PresenceWriterStats {
    let pending = this.pending.size;
    for (const id of this.inFlight) if (!this.pending.has(id)) pending++;
    return { pending, ...this.counts };
  }

  /** DEVICEID's presence is now PRESENCE: written soon, replacing any update of it not yet written. */
  update(deviceId: string, presence: DevicePresence): void {
    if (this.closing) {
      // The gateway's last offline updates come before close(); anything later is the next start's to correct.
      this.counts.dropped++;
      this.o.logger.debug({ deviceId, online: presence.online }, 'presence update after shutdown began: not written');
      return;
    }
    this.pending.set(deviceId, presence);
    if (!this.inFlight.has(deviceId) && !this.waiting.has(deviceId)) this.ready.add(deviceId);
    this.pump();
  }

  /**
   * Stops taking updates, writes the pending ones at once (a retry waiting
   * for its backoff goes now), and resolves when all have landed or after
   * TIMEOUTMS, whichever first; then nothing more is written or retried.
   */
  close(timeoutMs: number): Promise<FlushResult> {
    return (this.closeRun ??= this.closeOnce(timeoutMs));
  }

  private async closeOnce(timeoutMs: number): Promise<FlushResult> {
    this.closing = true;
    for (const [id, timer] of this.waiting) {
      this.timers.clearTimeout(timer);
      if (this.pending.has(id)) this.ready.add(id);
    }
    this.waiting.clear();
    this.pump();
    if (!this.isIdle()) {
      let timer: unknown;
      await new Promise<void>((resolve) => {
        this.idle = resolve;
        timer = this.timers.setTimeout(resolve, timeoutMs);
      });
      this.timers.clearTimeout(timer);
      this.idle = undefined;
    }
    this.closed = true;
    for (const timer of this.waiting.values()) this.timers.clearTimeout(timer);
    this.waiting.clear();
    this.ready.clear();
    const left = this.stats().pending;
    if (left > 0) {
      this.counts.dropped += left;
      this.o.logger.warn({ devices: left, timeoutMs }, 'presence updates not written by shutdown; the next start marks the devices this node held offline');
    }
    this.pending.clear();
    return { flushed: left === 0, left };
  }

  private isIdle(): boolean {
    return this.pending.size === 0 && this.inFlight.size === 0;
  }

  private pump(): void {
    if (this.closed) return;
    for (const id of this.ready) {
      if (this.inFlight.size >= this.maxInFlight) return;
      this.ready.delete(id);
      this.write(id);
    }
  }

  private write(id: string): void {
    const presence = this.pending.get(id)!;
    this.pending.delete(id);
    this.inFlight.add(id);
    this.o.store.setDeviceOnline(id, presence).then(
      () => this.landed(id),
      (err: unknown) => this.failed(id, presence, err),
    ).finally(() => {
      this.inFlight.delete(id);
      if (!this.closed && this.pending.has(id) && !this.waiting.has(id)) this.ready.add(id);
      this.pump();
      if (this.isIdle() || this.closed) this.idle?.();
    });
  }

  private landed(id: string): void {
    const failed = this.failures.get(id);
    if (failed === undefined) return;
    this.failures.delete(id);
    this.o.logger.debug({ deviceId: id, failedAttempts: failed }, 'presence write landed after failures');
    if (this.episode) {
      this.episode.landedAfterRetry++;
      this.endEpisodeIfDone();
    }
  }

  private failed(id: string, presence: DevicePresence, err: unknown): void {
    const code = err instanceof BrokerError ? err.code : 'INTERNAL';
    if (!isTransientStoreError(err)) {
      this.counts.dropped++;
      this.failures.delete(id);
      this.o.logger.error({ err, deviceId: id, online: presence.online, code }, 'presence write failed; the update is dropped');
      this.endEpisodeIfDone();
      return;
    }
    const attempt = (this.failures.get(id) ?? 0) + 1;
    this.failures.set(id, attempt);
    if (!this.episode) {
      this.episode = { failedWrites: 0, landedAfterRetry: 0, firstCode: code };
      this.o.logger.warn({ code, deviceId: id }, 'presence writes failing (the store is busy or away); retrying with backoff');
    }
    this.episode.failedWrites++;
    if (this.closed) return;
    // A newer update that came meanwhile replaces this one; it waits for the backoff too (the store is still busy).
    if (!this.pending.has(id)) this.pending.set(id, presence);
    this.counts.retried++;
    const delay = this.delay(attempt);
    this.o.logger.debug({ deviceId: id, code, attempt, delayMs: Math.round(delay) }, 'presence write failed; retrying');
    this.waiting.set(id, this.timers.setTimeout(() => this.retry(id), delay));
  }

  private retry(id: string): void {
    this.waiting.delete(id);
    if (this.closed) return;
    if (this.pending.has(id) && !this.inFlight.has(id)) this.ready.add(id);
    this.pump();
  }

  /** Capped exponential backoff with jitter: half the step fixed, half random, so that a storm's retries spread out. */
  private delay(attempt: number): number {
    const step = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(attempt - 1, 30));
    return step / 2 + (step / 2) * this.random();
  }

  /** One line when no device has a failed write outstanding any more. */
  private endEpisodeIfDone(): void {
    if (!this.episode || this.failures.size > 0) return;
    const { failedWrites, landedAfterRetry, firstCode } = this.episode;
    this.episode = undefined;
    this.o.logger.info({ failedWrites, landedAfterRetry, code: firstCode }, 'presence writes caught up after store failures');
  }
}
