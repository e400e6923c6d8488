/**
 * OpenSSH mode: sshd serves the host key and host certificate the trust
 * snapshot presents (issue #14). On a change the broker writes the new
 * files (config-files.ts writeHostKeyFile, then every file of the mode,
 * TrustedUserCAKeys from the snapshot's accepted user CAs), reloads sshd
 * (sshd-reload.ts) and asks ssh-keyscan whether sshd now serves them.
 * /healthz says what is left to do, with stable codes:
 * - SSHD_RELOAD_NEEDED: no reload is configured (ssh.sshdReloadCommand,
 *   ssh.sshdPidFile) and sshd still serves another key or certificate; it
 *   clears when an operator's reload makes sshd serve the presented one
 *   (checked every retry interval);
 * - SSHD_RELOAD_FAILED: the reload failed, or sshd still serves the old key
 *   after it; retried every interval.
 * The files of the previous key stay until sshd is seen serving the new
 * one (its per-connection processes read them), then they are removed.
 */
import { rm } from 'node:fs/promises';
import { formatPublicKey } from '../../ca/index.js';
import type { TrustSnapshot } from '../core/trust-roots.js';
import type { Logger } from '../telemetry/logger.js';
import { staleHostKeyFiles, writeHostKeyFile } from '../openssh/config-files.js';
import { keyLineCore, reloadSshd, type ServedHostKeys, type SshdReloadSettings } from '../openssh/sshd-reload.js';

export type SshdHostKeyProblem = 'SSHD_RELOAD_NEEDED' | 'SSHD_RELOAD_FAILED';

export interface SshdHostKeyDeps {
  readonly outDir: string;
  /** Writes every file of OpenSSH mode for SNAPSHOT, the host key's and certificate's as given. */
  writeFiles(snapshot: TrustSnapshot, hostKey: { hostKeyPath: string; hostCertificateFile: string }): Promise<void>;
  /** null: no reload configured (the operator reloads; healthz says so until then). */
  readonly reload: SshdReloadSettings | null;
  /** What sshd serves now; null when it cannot be reached. */
  scan(): Promise<ServedHostKeys | null>;
  readonly logger: Logger;
  /** Between a failed or pending reload's checks (default 30 s). */
  readonly retryMs?: number;
  /** How long a reload may take to show in ssh-keyscan (default 15 s). */
  readonly settleMs?: number;
}

/** Whether SERVED is SNAPSHOT's host key with its certificate. */
export function servesPresented(served: ServedHostKeys, snapshot: TrustSnapshot): boolean {
  const key = formatPublicKey(snapshot.hostKey.publicKey);
  const cert = keyLineCore(snapshot.hostCertificate);
  return served.keys.includes(key) && served.certificates.includes(cert);
}

export class SshdHostKeyFollower {
  private problemCode: SshdHostKeyProblem | null = null;
  private files: { hostKeyPath: string; hostCertificateFile: string } | undefined;
  private snapshot: TrustSnapshot | undefined;
  /** Bumped on every change: a settle of an older snapshot stops. */
  private generation = 0;
  private retry: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly deps: SshdHostKeyDeps) {}

  problem(): SshdHostKeyProblem | null {
    return this.problemCode;
  }

  /** The files for SNAPSHOT at start; sshd is reloaded only if it is seen serving something else. */
  async start(snapshot: TrustSnapshot): Promise<{ hostKeyPath: string; hostCertificateFile: string }> {
    const files = await this.write(snapshot);
    const served = await this.deps.scan();
    // Unreachable: nothing to judge (the port check at start says why); the same key already: nothing to do.
    if (served && !servesPresented(served, snapshot)) this.queue(++this.generation, snapshot);
    return files;
  }

  /** The snapshot changed: new files, then the reload and its check, in the background (one at a time, the latest wins). */
  change(next: TrustSnapshot, previous: TrustSnapshot): void {
    if (next.hostKey === previous.hostKey && next.hostCertificate === previous.hostCertificate) return;
    this.queue(++this.generation, next);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
  }

  private async write(snapshot: TrustSnapshot): Promise<{ hostKeyPath: string; hostCertificateFile: string }> {
    const files = await writeHostKeyFile(this.deps.outDir, snapshot.hostKey, snapshot.hostCertificate);
    await this.deps.writeFiles(snapshot, files);
    this.files = files;
    this.snapshot = snapshot;
    return files;
  }

  private queue(generation: number, snapshot: TrustSnapshot): void {
    this.chain = this.chain
      .then(async () => {
        if (generation !== this.generation || this.closed) return;
        if (this.snapshot !== snapshot) await this.write(snapshot);
        await this.settle(generation, snapshot);
      })
      .catch((err: unknown) => {
        this.deps.logger.error({ err }, 'OpenSSH mode: writing the host key files failed; retrying');
        this.setProblem('SSHD_RELOAD_FAILED');
        this.schedule(() => this.queue(generation, snapshot));
      });
  }

  private schedule(then: () => void): void {
    clearTimeout(this.retry);
    if (this.closed) return;
    this.retry = setTimeout(then, this.deps.retryMs ?? 30_000);
    this.retry.unref();
  }

  private setProblem(code: SshdHostKeyProblem | null): void {
    if (code !== this.problemCode) this.deps.logger[code ? 'warn' : 'info']({ code }, code ? `OpenSSH mode: ${code}` : 'OpenSSH mode: sshd serves the presented host key');
    this.problemCode = code;
  }

  /** Reloads (if configured) until sshd serves the snapshot's key and certificate; sets the problem meanwhile. */
  private async settle(generation: number, snapshot: TrustSnapshot): Promise<void> {
    if (generation !== this.generation || this.closed) return;
    const log = this.deps.logger;
    const fingerprintLine = formatPublicKey(snapshot.hostKey.publicKey);
    // Already served (reloaded by someone else, or a retry after a reload that took late): nothing to signal.
    if (await this.served(snapshot, 0)) return this.settled(generation);
    if (this.deps.reload) {
      try {
        await reloadSshd(this.deps.reload);
        log.info({ hostKey: fingerprintLine }, 'OpenSSH mode: sshd reloaded for the new host key');
      } catch (err) {
        log.error({ code: 'SSHD_RELOAD_FAILED', reason: (err as Error).message }, 'OpenSSH mode: sshd reload failed; retrying');
        this.setProblem('SSHD_RELOAD_FAILED');
        this.schedule(() => this.queue(generation, snapshot));
        return;
      }
    }
    if (this.deps.reload && (await this.served(snapshot, this.deps.settleMs ?? 15_000))) return this.settled(generation);
    this.setProblem(this.deps.reload ? 'SSHD_RELOAD_FAILED' : 'SSHD_RELOAD_NEEDED');
    if (!this.deps.reload) log.warn({ code: 'SSHD_RELOAD_NEEDED', hostKey: fingerprintLine }, 'OpenSSH mode: reload sshd to serve the new host key (or set ssh.sshdReloadCommand / ssh.sshdPidFile)');
    this.schedule(() => this.queue(generation, snapshot));
  }

  private async settled(generation: number): Promise<void> {
    if (generation !== this.generation) return;
    this.setProblem(null);
    await this.removeStaleFiles();
  }

  /** Whether sshd serves SNAPSHOT's key within WITHINMS (looked at once when 0). */
  private async served(snapshot: TrustSnapshot, withinMs: number): Promise<boolean> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const served = await this.deps.scan();
      if (served && servesPresented(served, snapshot)) return true;
      if (Date.now() >= deadline || this.closed) return false;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  private async removeStaleFiles(): Promise<void> {
    if (!this.files) return;
    for (const path of await staleHostKeyFiles(this.deps.outDir, this.files)) {
      await rm(path, { force: true }).catch((err: unknown) => this.deps.logger.warn({ err, path }, 'OpenSSH mode: removing an old host key file failed'));
    }
  }
}
