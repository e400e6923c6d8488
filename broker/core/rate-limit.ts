/**
 * Per-source limits, per IPv4 address or IPv6 /64 (one host usually owns a
 * whole /64, so per-address limits would be free to multiply):
 * - rate (SSH connections; failed logins, enrollments and renewals): a token
 *   bucket per source. A full bucket is indistinguishable from no bucket,
 *   which is what keeps the map small: full buckets are pruned when it grows;
 * - concurrency (unauthenticated SSH connections, API sockets): PerSourceCap;
 * - and, for all sources together, sshd's random early drop (shouldDropEarly).
 */
import { isIPv6 } from 'node:net';

export interface TokenBucketOptions {
  /** Tokens added per second (sustained connections per second per source). */
  readonly ratePerSecond: number;
  /** Bucket size: connections a source may open at once after being quiet. */
  readonly burst: number;
  /** Above this many tracked sources, full buckets are pruned, then the oldest. Default 65536. */
  readonly maxSources?: number;
}

interface Bucket {
  tokens: number;
  /** Milliseconds, on the limiter's clock, when `tokens` was computed. */
  at: number;
  /** Already refused since the last admission: log the first refusal only. */
  refusing: boolean;
}

export interface RateDecision {
  readonly allowed: boolean;
  /** True for the first refusal of a run, so that a flood makes one log line, not thousands. */
  readonly firstRefusal: boolean;
}

/** The bucket key for ADDR: the IPv4 address (also when IPv4-mapped), or the IPv6 /64. */
export function rateLimitKey(addr: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(addr);
  if (mapped) return mapped[1]!;
  const bare = addr.split('%')[0]!;
  if (!isIPv6(bare)) return addr;
  const [h = '', t] = bare.includes('::') ? bare.split('::') : [bare, undefined];
  const head = h ? h.split(':') : [];
  const tail = t ? t.split(':') : [];
  // An embedded dotted quad stands for two 16-bit groups.
  const tailGroups = tail.reduce((n, g) => n + (g.includes('.') ? 2 : 1), 0);
  const groups = t === undefined ? head : [...head, ...Array<string>(Math.max(0, 8 - head.length - tailGroups)).fill('0'), ...tail];
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':')}::/64`;
}

export class ConnectionRateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly rate: number;
  private readonly burst: number;
  private readonly maxSources: number;

  constructor(
    options: TokenBucketOptions,
    /** Monotonic milliseconds; injected so tests control time. */
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(options.ratePerSecond > 0) || !(options.burst >= 1)) throw new RangeError('rate must be > 0 and burst >= 1');
    this.rate = options.ratePerSecond / 1000;
    this.burst = options.burst;
    this.maxSources = options.maxSources ?? 65536;
  }

  get trackedSources(): number {
    return this.buckets.size;
  }

  /** BUCKET's tokens at NOW (refilled since it was last computed, never beyond the burst). */
  private tokensAt(bucket: Bucket, now: number): number {
    return Math.min(this.burst, bucket.tokens + (now - bucket.at) * this.rate);
  }

  /** Takes one token for a new connection from ADDR. */
  take(addr: string): RateDecision {
    const key = rateLimitKey(addr);
    const now = this.now();
    let bucket = this.buckets.get(key);
    if (bucket) {
      bucket.tokens = this.tokensAt(bucket, now);
      bucket.at = now;
    } else {
      if (this.buckets.size >= this.maxSources) this.prune(now);
      bucket = { tokens: this.burst, at: now, refusing: false };
      this.buckets.set(key, bucket);
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      bucket.refusing = false;
      return { allowed: true, firstRefusal: false };
    }
    const firstRefusal = !bucket.refusing;
    bucket.refusing = true;
    return { allowed: false, firstRefusal };
  }

  /** Seconds until ADDR's bucket holds a token again (0: it holds one now). Takes nothing. */
  retryAfterSeconds(addr: string): number {
    const bucket = this.buckets.get(rateLimitKey(addr));
    if (!bucket) return 0;
    const tokens = this.tokensAt(bucket, this.now());
    return tokens >= 1 ? 0 : Math.ceil((1 - tokens) / this.rate / 1000);
  }

  /** Drops buckets that have refilled (as good as absent); if that is not enough, the oldest quarter. */
  private prune(now: number): void {
    for (const [key, b] of this.buckets) {
      if (this.tokensAt(b, now) >= this.burst) this.buckets.delete(key);
    }
    if (this.buckets.size < this.maxSources) return;
    let drop = Math.ceil(this.maxSources / 4);
    for (const key of this.buckets.keys()) {
      if (drop-- <= 0) break;
      this.buckets.delete(key);
    }
  }
}

/** sshd's MaxStartups start:rate:full, for connections that have not authenticated yet. */
export interface EarlyDropPolicy {
  /** Below this many, every new connection is admitted. */
  readonly start: number;
  /** At START, a new connection is refused with this probability (percent)… */
  readonly rate: number;
  /** …rising linearly to 100% here: from FULL on, every new one is refused. */
  readonly full: number;
}

/** sshd's `start:rate:full` text as a policy; undefined unless 1 <= start <= full and rate is 1..100. */
export function parseMaxStartups(text: string): EarlyDropPolicy | undefined {
  const m = /^(\d{1,6}):(\d{1,3}):(\d{1,6})$/.exec(text);
  if (!m) return undefined;
  const [start, rate, full] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return start >= 1 && start <= full && rate >= 1 && rate <= 100 ? { start, rate, full } : undefined;
}

/**
 * Random early drop (sshd's drop_connection): whether to refuse a new
 * connection while OPEN others are unauthenticated. Random, so that a flood
 * cannot keep every slot: a device retrying still gets in now and then.
 * RANDOM returns [0, 1); injected so that tests decide the draw.
 */
export function shouldDropEarly(open: number, policy: EarlyDropPolicy, random: () => number = Math.random): boolean {
  if (open >= policy.full) return true;
  if (open < policy.start) return false;
  const percent = policy.rate + ((100 - policy.rate) * (open - policy.start)) / (policy.full - policy.start);
  return random() * 100 < percent;
}

/**
 * Concurrent things (unauthenticated SSH connections, sockets on the API
 * port) per source, keyed as the token buckets are (IPv4 address, IPv6 /64):
 * sshd's PerSourceMaxStartups. Every admitted acquire must be released once.
 */
export class PerSourceCap {
  private readonly held = new Map<string, number>();
  /** Sources refused since their last admission: log the first refusal of a run only. */
  private readonly refusing = new Set<string>();

  constructor(private readonly max: number) {
    if (!(max >= 1)) throw new RangeError('the per-source cap must be >= 1');
  }

  /** Takes one slot for ADDR, unless it holds MAX already. */
  acquire(addr: string): RateDecision {
    const key = rateLimitKey(addr);
    const held = this.held.get(key) ?? 0;
    if (held >= this.max) {
      const firstRefusal = !this.refusing.has(key);
      this.refusing.add(key);
      return { allowed: false, firstRefusal };
    }
    this.held.set(key, held + 1);
    this.refusing.delete(key);
    return { allowed: true, firstRefusal: false };
  }

  /** Gives back a slot ADDR acquired. */
  release(addr: string): void {
    const key = rateLimitKey(addr);
    const held = (this.held.get(key) ?? 0) - 1;
    if (held > 0) this.held.set(key, held);
    else this.held.delete(key);
  }

  /** Slots ADDR's source holds now. */
  holding(addr: string): number {
    return this.held.get(rateLimitKey(addr)) ?? 0;
  }
}
