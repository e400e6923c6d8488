/**
 * The broker's revocation state: the same facts in memory (for the embedded
 * gateway's per-login check and the reconciliation of live sessions) and on
 * disk as the KRL (for sshd's RevokedKeys and GET /v1/krl).
 *
 * DESIGN "Revocation does not depend on I/O succeeding": deny() puts a
 * device or serial into memory at once, before any file is touched, and a
 * rebuild refreshes memory from the store before it writes. A KRL write
 * that fails (full or read-only disk) is loud (error log, health(), the
 * metrics) and retried with backoff until it succeeds; it never undoes or
 * delays the in-memory deny. Rebuilds are serialized so the file never
 * goes backwards.
 */
import { encodeKrl, writeKrl, type KrlInput, type PublicKey } from '../../ca/index.js';
import type { Logger } from '../telemetry/logger.js';
import type { StoreTx } from '../store/types.js';

type RevocationStore = Pick<StoreTx, 'listRevokedUnexpiredSerials' | 'listRevokedDeviceIds' | 'nextKrlVersion'>;

/** Writes the KRL's bytes somewhere more (OpenSSH mode: the file sshd reads). */
export type KrlWriter = (krl: Buffer) => Promise<void>;

export interface RevocationListOptions {
  readonly logger: Logger;
  /** First retry after a failed write; doubles up to retryMaxMs. */
  readonly retryFirstMs?: number;
  readonly retryMaxMs?: number;
}

/** Whether the KRL files on disk say what the store says. */
export interface KrlHealth {
  readonly written: boolean;
  /** Since when writes fail (absent while they succeed). */
  readonly failingSince?: Date;
  /** Failed writes since start. */
  readonly writeFailures: number;
}

export class RevocationList {
  private serials = new Set<bigint>();
  private deviceIds = new Set<string>();
  /** Denials made in memory, with the sequence number they were made at: a rebuild that read the store before them keeps them. */
  private readonly deniedSerials = new Map<bigint, number>();
  private readonly deniedDevices = new Map<string, number>();
  private denySeq = 0;
  private bytes: Buffer;
  private pending: Promise<unknown> = Promise.resolve();
  /** The rebuild waiting for the one running to end, if any. */
  private queued: Promise<boolean> | undefined;
  private readonly writers: KrlWriter[] = [];
  private failingSince: Date | undefined;
  private writeFailures = 0;
  private retryDelayMs = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private krlVersion = 0n;
  /** Every user CA whose certificates log in now (more than one during a user-ca rotation): the KRL has a section for each. */
  private userCaKeys: readonly PublicKey[];
  constructor(
    private readonly store: RevocationStore,
    userCaKey: PublicKey,
    private readonly krlPath: string,
    private readonly clock: () => Date,
    private readonly options: RevocationListOptions,
  ) {
    this.userCaKeys = [userCaKey];
    this.bytes = encodeKrl({ caKey: userCaKey, version: 0n, generatedAt: clock() });
  }

  /** The accepted user CAs changed (a rotation): the next rebuild writes a section for each; call refresh() to write it now. */
  useUserCaKeys(keys: readonly PublicKey[]): void {
    if (keys.length === 0) throw new Error('revocation list: at least one user CA');
    this.userCaKeys = [...keys];
  }

  /** Another place the KRL is written to on every rebuild (its failures count as the KRL's). */
  addWriter(writer: KrlWriter): void {
    this.writers.push(writer);
  }

  /** Denies in memory at once; the next rebuild makes it durable on disk. */
  deny(facts: { readonly deviceIds?: readonly string[]; readonly serials?: readonly bigint[] }): void {
    const seq = ++this.denySeq;
    for (const id of facts.deviceIds ?? []) {
      this.deviceIds.add(id);
      this.deniedDevices.set(id, seq);
    }
    for (const serial of facts.serials ?? []) {
      this.serials.add(serial);
      this.deniedSerials.set(serial, seq);
    }
  }

  /**
   * Rebuilds memory from the store, then writes the KRL everywhere. Resolves
   * with whether the files were written; a failed write is logged and
   * retried in the background. Rejects only if the store cannot be read.
   */
  refresh(): Promise<boolean> {
    // A rebuild queued but not started yet reads the store after this call: share it (a burst of revocations, or
    // the same one heard again from another node, costs one more rebuild, not one each).
    if (this.queued) return this.queued;
    const run = this.pending.then(() => {
      if (this.queued === run) this.queued = undefined;
      return this.rebuild();
    });
    this.queued = run;
    this.pending = run.catch(() => undefined);
    return run;
  }

  private async rebuild(): Promise<boolean> {
    const now = this.clock();
    const seq = this.denySeq;
    const [serials, deviceIds, version] = await Promise.all([
      this.store.listRevokedUnexpiredSerials(now),
      this.store.listRevokedDeviceIds(),
      this.store.nextKrlVersion(),
    ]);
    this.serials = new Set([...serials, ...laterThan(this.deniedSerials, seq)]);
    this.deviceIds = new Set([...deviceIds, ...laterThan(this.deniedDevices, seq)]);
    const input: KrlInput = {
      caKey: this.userCaKeys[0]!,
      moreCaKeys: this.userCaKeys.slice(1),
      serials,
      // Key ids too: they also cover a certificate signed while the revocation was committing.
      keyIds: deviceIds.map((id) => `device:${id}`),
      version,
      generatedAt: now,
      comment: 'certunnel revoked devices',
    };
    this.bytes = encodeKrl(input);
    this.krlVersion = version;
    return this.write(input);
  }

  private async write(input: KrlInput): Promise<boolean> {
    try {
      await writeKrl(this.krlPath, input);
      for (const writer of this.writers) await writer(this.bytes);
    } catch (err) {
      this.writeFailed(err);
      return false;
    }
    if (this.failingSince) this.options.logger.info({ failingSince: this.failingSince.toISOString() }, 'KRL written again after failed writes');
    this.failingSince = undefined;
    this.retryDelayMs = 0;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    return true;
  }

  private writeFailed(err: unknown): void {
    this.writeFailures += 1;
    this.failingSince ??= this.clock();
    const first = this.options.retryFirstMs ?? 1000;
    this.retryDelayMs = Math.min(this.retryDelayMs === 0 ? first : this.retryDelayMs * 2, this.options.retryMaxMs ?? 30_000);
    // The path and the errno code only: nothing secret is in either.
    this.options.logger.error(
      { code: (err as NodeJS.ErrnoException).code, path: this.krlPath, failingSince: this.failingSince.toISOString(), retryInMs: this.retryDelayMs },
      'KRL write failed: revoked devices are denied in memory, the file on disk is stale; retrying',
    );
    if (this.closed || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.closed) this.refresh().catch((e: unknown) => this.options.logger.error({ err: e }, 'KRL rebuild failed'));
    }, this.retryDelayMs);
    this.retryTimer.unref();
  }

  /** Whether a device certificate with this serial / key id is revoked. */
  isRevoked(cert: { serial: bigint; keyId: string }): boolean {
    if (this.serials.has(cert.serial)) return true;
    const m = /^device:(.+)$/.exec(cert.keyId);
    return m !== null && this.deviceIds.has(m[1]!);
  }

  isDeviceRevoked(deviceId: string): boolean {
    return this.deviceIds.has(deviceId);
  }

  health(): KrlHealth {
    return { written: this.failingSince === undefined, writeFailures: this.writeFailures, ...(this.failingSince ? { failingSince: this.failingSince } : {}) };
  }

  get krl(): Buffer {
    return this.bytes;
  }

  /** The version of the KRL in krl (0 before the first rebuild). */
  get version(): bigint {
    return this.krlVersion;
  }

  /** Stops retrying (shutdown). */
  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
  }
}

/** Keys denied after sequence number SEQ; older ones are forgotten (the store had them when read). */
function laterThan<K>(denied: Map<K, number>, seq: number): K[] {
  const later: K[] = [];
  for (const [key, at] of denied) {
    if (at > seq) later.push(key);
    else denied.delete(key);
  }
  return later;
}
