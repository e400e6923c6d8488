/**
 * Per-source rate limiting (SSH connections; failed proxy logins): a token bucket per IPv4 address or
 * IPv6 /64 (one host usually owns a whole /64, so per-address buckets would
 * be free to multiply). A full bucket is indistinguishable from no bucket,
 * which is what keeps the map small: full buckets are pruned when it grows.
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
