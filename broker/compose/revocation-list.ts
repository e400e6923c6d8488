/**
 * The broker's revocation state: the KRL on disk (for sshd's RevokedKeys and
 * GET /v1/krl) and the same facts in memory (for the embedded gateway's
 * per-login check). Rebuilt from the store at start and after every
 * revocation; rebuilds are serialized so the file never goes backwards.
 */
import { encodeKrl, writeKrl, type PublicKey } from '../../ca/index.js';
import type { StoreTx } from '../store/types.js';

type RevocationStore = Pick<StoreTx, 'listRevokedUnexpiredSerials' | 'listRevokedDeviceIds' | 'nextKrlVersion'>;

export class RevocationList {
  private serials = new Set<bigint>();
  private deviceIds = new Set<string>();
  private bytes: Buffer;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: RevocationStore,
    private readonly userCaKey: PublicKey,
    private readonly krlPath: string,
    private readonly clock: () => Date,
  ) {
    this.bytes = encodeKrl({ caKey: userCaKey, version: 0n, generatedAt: clock() });
  }

  /** Rebuilds from the store and rewrites the KRL file atomically. */
  refresh(): Promise<void> {
    const run = this.pending.then(() => this.rebuild());
    this.pending = run.catch(() => undefined);
    return run;
  }

  private async rebuild(): Promise<void> {
    const now = this.clock();
    const [serials, deviceIds, version] = await Promise.all([
      this.store.listRevokedUnexpiredSerials(now),
      this.store.listRevokedDeviceIds(),
      this.store.nextKrlVersion(),
    ]);
    const input = {
      caKey: this.userCaKey,
      serials,
      // Key ids too: they also cover a certificate signed while the revocation was committing.
      keyIds: deviceIds.map((id) => `device:${id}`),
      version,
      generatedAt: now,
      comment: 'certunnel revoked devices',
    };
    await writeKrl(this.krlPath, input);
    this.bytes = encodeKrl(input);
    this.serials = new Set(serials);
    this.deviceIds = new Set(deviceIds);
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

  get krl(): Buffer {
    return this.bytes;
  }
}
