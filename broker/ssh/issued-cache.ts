/**
 * Logins while the database is away (issue #13, docs/cluster.md "Events
 * between nodes"): the login check (issued.ts) reads the store's record of
 * the presented serial on every login. When the store answers
 * STORE_UNAVAILABLE, and only then, this bounded cache answers instead
 * with the record the store gave for that serial at a recent login on
 * this node, and checkIssued judges it as usual (the same key, key id,
 * principal and validity as issued). Fail closed everywhere else:
 *
 * - only records that allowed a login are kept (serial not revoked, device
 *   active), for at most ttlMs after the store last said so, and never past
 *   the certificate's own expiry;
 * - never for a serial or a device this node has seen revoked: an event
 *   (or the reconciliation) forgets the device's records, a lookup that
 *   was under way while it did remembers nothing, and seenRevoked (the
 *   in-memory revocation list) is asked again before a record is used;
 * - not while the node catches up after it lost its events (suspend()
 *   until trust()): only once revocations have been re-read from the store
 *   and live sessions reconciled is the cache believed again;
 * - any other error of the store (STORE_BUSY, INTERNAL) still refuses.
 *
 * The window this leaves, documented in SECURITY.md: a device revoked on
 * another node while this node cannot reach the database (a partition) can
 * still log in here until its record is ttlMs old or its certificate expires.
 */
import { BrokerError } from '../core/errors.js';
import type { IssuedCertificate, LookupIssued } from './issued.js';

export interface IssuedCacheOptions {
  /** Records kept at most (the least recently verified go first). */
  readonly maxEntries: number;
  /** How long after the store vouched for a serial its record may stand in for the store. */
  readonly ttlMs: number;
  readonly clock: () => Date;
  /** The node's in-memory revocation list: a serial or device it denies is never answered from the cache. */
  seenRevoked(record: { serial: bigint; keyId: string; deviceId: string | null }): boolean;
}

interface Entry {
  readonly record: IssuedCertificate;
  readonly verifiedAt: number;
}

export const isStoreUnavailable = (err: unknown): boolean => err instanceof BrokerError && err.code === 'STORE_UNAVAILABLE';

export class IssuedCache {
  private readonly entries = new Map<bigint, Entry>();
  /** Bumped by every forget: a lookup that began before one remembers nothing. */
  private epoch = 0;
  private trusted = true;
  private answered = 0;

  constructor(private readonly o: IssuedCacheOptions) {}

  /** LOOKUP with the cache behind it: the store's answer when it gives one, else a recent record, else the store's error. */
  wrap(lookup: LookupIssued): LookupIssued {
    return async (serial) => {
      const epoch = this.epoch;
      let record: IssuedCertificate | null;
      try {
        record = await lookup(serial);
      } catch (err) {
        if (!isStoreUnavailable(err)) throw err;
        const cached = this.recall(serial);
        if (!cached) throw err;
        this.answered += 1;
        return cached;
      }
      if (epoch === this.epoch) this.remember(serial, record);
      else this.entries.delete(serial);
      return record;
    };
  }

  private remember(serial: bigint, record: IssuedCertificate | null): void {
    this.entries.delete(serial);
    if (!record || record.certificate.revokedAt !== null || record.device?.status !== 'active') return;
    this.entries.set(serial, { record, verifiedAt: this.o.clock().getTime() });
    while (this.entries.size > this.o.maxEntries) this.entries.delete(this.entries.keys().next().value!);
  }

  private recall(serial: bigint): IssuedCertificate | undefined {
    if (!this.trusted) return undefined;
    const entry = this.entries.get(serial);
    if (!entry) return undefined;
    const now = this.o.clock().getTime();
    const { certificate } = entry.record;
    const stale = now - entry.verifiedAt > this.o.ttlMs || now >= certificate.validBefore.getTime();
    if (stale || this.o.seenRevoked({ serial, keyId: certificate.keyId, deviceId: certificate.deviceId })) {
      this.entries.delete(serial);
      return undefined;
    }
    return entry.record;
  }

  /** DEVICEID was revoked (or its records must not be believed): its records go, and lookups under way remember nothing. */
  forgetDevice(deviceId: string): void {
    this.epoch += 1;
    for (const [serial, entry] of this.entries) if (entry.record.certificate.deviceId === deviceId) this.entries.delete(serial);
  }

  forgetSerials(serials: readonly bigint[]): void {
    this.epoch += 1;
    for (const serial of serials) this.entries.delete(serial);
  }

  /** Not to be believed until trust(): the node is catching up on events it may have missed. */
  suspend(): void {
    this.trusted = false;
  }

  trust(): void {
    this.trusted = true;
  }

  /** Records held, and logins answered from them since start. */
  stats(): { entries: number; answered: number; trusted: boolean } {
    return { entries: this.entries.size, answered: this.answered, trusted: this.trusted };
  }
}
