/**
 * This node's TrustRoots, kept from the store (issue #14, docs/rotation.md):
 *
 * - at start it reads the data directory's keys, applies any committed
 *   rotation it missed while down (oldest first: a node that slept through
 *   a user-ca commit needs the new user CA to open a later rotation's seal),
 *   and loads the active rotation;
 * - it follows the store: on PostgreSQL the trigger of migration 005
 *   notifies `certunnel_rotations` and a poll every pollMs stands in for a
 *   notification missed; on SQLite (one node) the changes are this node's
 *   own, each followed by refresh(), and the poll catches anything else;
 * - a rotation in prepare: it opens the next key (rotation-seal.ts), acks
 *   it (nodes.rotation_ack) and moves the rotation to learn once every up
 *   node has (core/rotation.ts learnIfReady: a compare-and-swap, any node);
 * - a committed rotation: it writes the new key files into the data
 *   directory (atomically, private keys 0600, each old file kept as
 *   `<name>.retired-<id>`), the file that decides the root's fingerprint
 *   last, so a crash half-way is applied again at the next start; then the
 *   snapshot swaps;
 * - a rolled-back rotation: the next key is dropped.
 *
 * The snapshot of each phase is core/rotation-snapshot.ts's.
 */
import { chmod, copyFile, readFile, stat } from 'node:fs/promises';
import {
  decodePrivateKey, encodePrivateKey, fingerprint, formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, loadPublicKey, signHostCert, writeFileAtomic,
} from '../../ca/index.js';
import type { BrokerConfig } from '../core/config.js';
import { BrokerError } from '../core/errors.js';
import { learnIfReady, type NextKey, type RotationSupport } from '../core/rotation.js';
import { openNextKey, type NextKeyMaterial } from '../core/rotation-seal.js';
import { trustSnapshot, type CurrentKeys, type LoadedNext, type LoadedRotation } from '../core/rotation-snapshot.js';
import type { TlsIdentity, TrustRootName, TrustRoots, TrustSnapshot } from '../core/trust-roots.js';
import type { Store, TrustRotationRecord } from '../store/types.js';
import { openEventFeed, ROTATIONS_CHANNEL, type EventFeed } from '../store/event-feed.js';
import type { Logger } from '../telemetry/logger.js';
import { brokerHostnames, tlsHostnames, type DataPaths } from './data-dir.js';
import { generateTlsIdentity, servedTlsIdentity } from './tls.js';

export interface RotationFollowerOptions {
  readonly store: Store;
  readonly config: BrokerConfig;
  readonly logger: Logger;
  readonly clock: () => Date;
  readonly paths: DataPaths;
  /** Decrypts (and encrypts, when a new CA key is written) the CA keys. */
  readonly passphrase?: string;
  /** This node's id (nodes.rotation_ack). */
  readonly nodeId: string;
  /** PostgreSQL: listen for rotation changes. */
  readonly databaseUrl?: string;
  /** How often the store is read without a notification; default 5 s on PostgreSQL, 30 s on SQLite. */
  readonly pollMs?: number;
}

export interface RotationFollower extends TrustRoots, RotationSupport {
  close(): Promise<void>;
}

/** The API's TLS identity on disk; null when the broker does not serve TLS itself. */
async function loadTls(paths: DataPaths, insecureHttp: boolean): Promise<TlsIdentity | null> {
  if (insecureHttp) return null;
  return servedTlsIdentity(await readFile(paths.tlsKey, 'utf8'), await readFile(paths.tlsCert, 'utf8'));
}

/** The data directory's keys (the current ones); no TLS identity when the API is plain HTTP (api.insecureHttp). */
export async function loadCurrentKeys(
  paths: DataPaths,
  options: { readonly insecureHttp: boolean; readonly passphrase?: string | undefined; readonly backupPins?: readonly string[] },
): Promise<CurrentKeys> {
  return {
    userCa: await loadKeyPair(paths.userCa, { passphrase: options.passphrase }),
    hostCa: await loadPublicKey(`${paths.hostCa}.pub`),
    hostKey: await loadKeyPair(paths.hostKey),
    hostCertificate: (await readFile(paths.hostCert, 'utf8')).trim(),
    tls: await loadTls(paths, options.insecureHttp),
    backupPins: options.backupPins ?? [],
  };
}

/** ROOT's fingerprint among KEYS: SHA256:… for SSH keys, the sha256// pin for TLS (null: no TLS of its own). */
export function rootFingerprint(keys: CurrentKeys, root: TrustRootName): string | null {
  switch (root) {
    case 'user-ca':
      return fingerprint(keys.userCa.publicKey);
    case 'host-ca':
      return fingerprint(keys.hostCa);
    case 'host-key':
      return fingerprint(keys.hostKey.publicKey);
    case 'api-tls':
      return keys.tls?.pin ?? null;
  }
}

function loadNext(material: NextKeyMaterial): LoadedNext {
  switch (material.root) {
    case 'user-ca':
      return { root: 'user-ca', userCa: decodePrivateKey(material.key) };
    case 'host-key':
      return { root: 'host-key', hostKey: decodePrivateKey(material.key), hostCertificate: material.hostCertificate.trim() };
    case 'host-ca':
      return { root: 'host-ca', hostCa: decodePrivateKey(material.key), hostCertificate: material.hostCertificate.trim() };
    case 'api-tls':
      return { root: 'api-tls', tls: servedTlsIdentity(material.key, material.cert) };
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return false;
      throw err;
    },
  );
}

/** Keeps PATH as PATH.retired-ID (once: a second application after a crash must not overwrite the real old one). */
async function retire(path: string, id: number, mode: number): Promise<void> {
  const retired = `${path}.retired-${id}`;
  if (!(await exists(path)) || (await exists(retired))) return;
  await copyFile(path, retired);
  await chmod(retired, mode);
}

/**
 * Writes a committed rotation's next key into the data directory. The
 * file read back as the root's fingerprint is written last (see header).
 */
async function writeCommitted(paths: DataPaths, id: number, next: LoadedNext, passphrase: string | undefined): Promise<void> {
  const line = (cert: string, comment: string) => `${cert.split(' ').slice(0, 2).join(' ')} ${comment}\n`;
  switch (next.root) {
    case 'user-ca':
      await retire(paths.userCa, id, 0o600);
      await retire(`${paths.userCa}.pub`, id, 0o644);
      await writeFileAtomic(`${paths.userCa}.pub`, `${formatPublicKey(next.userCa.publicKey, 'certunnel user CA')}\n`, { mode: 0o644 });
      await writeFileAtomic(paths.userCa, encodePrivateKey(next.userCa, { passphrase, comment: 'certunnel user CA' }), { mode: 0o600 });
      return;
    case 'host-key':
      for (const [path, mode] of [[paths.hostKey, 0o600], [`${paths.hostKey}.pub`, 0o644], [paths.hostCert, 0o644]] as const) await retire(path, id, mode);
      await writeFileAtomic(paths.hostCert, line(next.hostCertificate, 'certunnel broker host certificate'), { mode: 0o644 });
      await writeFileAtomic(`${paths.hostKey}.pub`, `${formatPublicKey(next.hostKey.publicKey, 'certunnel broker host key')}\n`, { mode: 0o644 });
      await writeFileAtomic(paths.hostKey, encodePrivateKey(next.hostKey, { comment: 'certunnel broker host key' }), { mode: 0o600 });
      return;
    case 'host-ca':
      for (const [path, mode] of [[paths.hostCa, 0o600], [`${paths.hostCa}.pub`, 0o644], [paths.hostCert, 0o644]] as const) await retire(path, id, mode);
      await writeFileAtomic(paths.hostCert, line(next.hostCertificate, 'certunnel broker host certificate'), { mode: 0o644 });
      await writeFileAtomic(paths.hostCa, encodePrivateKey(next.hostCa, { passphrase, comment: 'certunnel host CA' }), { mode: 0o600 });
      await writeFileAtomic(`${paths.hostCa}.pub`, `${formatPublicKey(next.hostCa.publicKey, 'certunnel host CA')}\n`, { mode: 0o644 });
      return;
    case 'api-tls':
      for (const [path, mode] of [[paths.tlsKey, 0o600], [paths.tlsCert, 0o644], [paths.apiPin, 0o644]] as const) await retire(path, id, mode);
      await writeFileAtomic(paths.tlsKey, next.tls.key, { mode: 0o600 });
      await writeFileAtomic(paths.apiPin, `${next.tls.pin}\n`, { mode: 0o644 });
      await writeFileAtomic(paths.tlsCert, next.tls.cert, { mode: 0o644 });
  }
}

const committed = (r: TrustRotationRecord) => r.outcome === 'committed' || r.outcome === 'forced';

/** How far back a node that was down looks for commits it missed. */
const HISTORY = 100;

class Follower implements RotationFollower {
  #keys: CurrentKeys;
  #loaded: LoadedRotation | null = null;
  #acked = false;
  #snapshot: TrustSnapshot;
  readonly #listeners = new Set<(s: TrustSnapshot, p: TrustSnapshot) => void>();
  #chain: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #feed: EventFeed | undefined;
  #closed = false;

  constructor(
    private readonly o: RotationFollowerOptions,
    keys: CurrentKeys,
  ) {
    this.#keys = keys;
    this.#snapshot = trustSnapshot(keys, null);
  }

  current(): TrustSnapshot {
    return this.#snapshot;
  }

  onChange(listener: (snapshot: TrustSnapshot, previous: TrustSnapshot) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** One refresh at a time; a failure is logged and the next poll tries again (the snapshot stays as it was). */
  refresh(): Promise<void> {
    const run = this.#chain.then(() => (this.#closed ? undefined : this.#refresh()));
    this.#chain = run.catch((err: unknown) => this.o.logger.error({ err }, 'rotation: following the store failed; retrying at the next poll'));
    return run;
  }

  follow(): void {
    const clustered = this.o.databaseUrl !== undefined;
    const pollMs = this.o.pollMs ?? (clustered ? 5000 : 30_000);
    this.#timer = setInterval(() => void this.refresh().catch(() => undefined), pollMs);
    this.#timer.unref();
    if (this.o.databaseUrl !== undefined) {
      this.#feed = openEventFeed({
        url: this.o.databaseUrl,
        applicationName: `certunnel-rotations:${this.o.nodeId}`,
        channel: ROTATIONS_CHANNEL,
        onNotification: () => void this.refresh().catch(() => undefined),
        onListening: () => void this.refresh().catch(() => undefined),
        onDown: (err) => this.o.logger.warn({ err: err.message }, 'rotation: not listening for changes; polling until back'),
      });
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#feed?.close();
    await this.#chain;
  }

  async makeNextKey(root: TrustRootName): Promise<NextKey> {
    const { config, paths, passphrase, store, clock } = this.o;
    const keys = this.#keys;
    const from = rootFingerprint(keys, root);
    switch (root) {
      case 'user-ca': {
        const next = generateKeyPair();
        return { material: { root, key: encodePrivateKey(next) }, fromFingerprint: from!, nextFingerprint: fingerprint(next.publicKey) };
      }
      case 'host-key': {
        const next = generateKeyPair();
        const hostCa = await loadKeyPair(paths.hostCa, { passphrase });
        const cert = signHostCert({ hostCa, publicKey: next.publicKey, hostnames: brokerHostnames(config), serial: await store.nextSerial(), now: clock() });
        return { material: { root, key: encodePrivateKey(next), hostCertificate: formatCertificate(cert) }, fromFingerprint: from!, nextFingerprint: fingerprint(next.publicKey) };
      }
      case 'host-ca': {
        const next = generateKeyPair();
        const cert = signHostCert({ hostCa: next, publicKey: keys.hostKey.publicKey, hostnames: brokerHostnames(config), serial: await store.nextSerial(), now: clock() });
        return { material: { root, key: encodePrivateKey(next), hostCertificate: formatCertificate(cert) }, fromFingerprint: from!, nextFingerprint: fingerprint(next.publicKey) };
      }
      case 'api-tls': {
        if (from === null) {
          throw new BrokerError('ROTATION_UNSUPPORTED', 'this broker does not serve its own TLS (api.insecureHttp): rotate the certificate of the proxy in front of it instead');
        }
        const next = generateTlsIdentity(tlsHostnames(config), clock());
        return { material: { root, key: next.keyPem, cert: next.certPem }, fromFingerprint: from, nextFingerprint: next.pin };
      }
    }
  }

  async #refresh(): Promise<void> {
    const { store } = this.o;
    await this.#applyMissedCommits();
    const active = await store.activeRotation();
    if (active && this.#loaded?.id !== active.id) {
      this.#loaded = { id: active.id, root: active.root, phase: active.phase, next: loadNext(openNextKey(active.nextSealed, active.root, this.#keys.userCa)) };
      this.#acked = false;
      this.o.logger.info({ rotation: active.id, root: active.root, phase: active.phase, next: active.nextFingerprint }, 'rotation: next key loaded');
    } else if (active && this.#loaded) {
      this.#loaded = { ...this.#loaded, phase: active.phase };
    } else if (!active && this.#loaded) {
      this.o.logger.info({ rotation: this.#loaded.id }, 'rotation: finished; next key dropped (or now current)');
      this.#loaded = null;
    }
    if (active && !this.#acked) this.#acked = await store.ackRotation(this.o.nodeId, active.id);
    if (active?.phase === 'prepare' && this.#acked) {
      const moved = await learnIfReady({ store, config: this.o.config, clock: this.o.clock, trustRoots: this, rotation: this });
      if (moved && this.#loaded) this.#loaded = { ...this.#loaded, phase: 'learn' };
    }
    this.#publish(trustSnapshot(this.#keys, this.#loaded));
  }

  /** Committed rotations whose starting point is what the data directory still holds, oldest first, applied. */
  async #applyMissedCommits(): Promise<void> {
    const history = (await this.o.store.listRotations(HISTORY)).filter(committed).reverse();
    for (const r of history) {
      if (rootFingerprint(this.#keys, r.root) !== r.fromFingerprint) continue;
      // Sealed under the user CA current at its start: the one on disk until this very rotation (if a user-ca one) is applied.
      const next = loadNext(openNextKey(r.nextSealed, r.root, this.#keys.userCa));
      await writeCommitted(this.o.paths, r.id, next, this.o.passphrase);
      this.#keys = await loadCurrentKeys(this.o.paths, { insecureHttp: this.o.config.api.insecureHttp, passphrase: this.o.passphrase, backupPins: this.o.config.api.backupPins });
      this.o.logger.info({ rotation: r.id, root: r.root, outcome: r.outcome, now: r.nextFingerprint }, 'rotation: committed; the new key is current and on disk (the old kept as .retired)');
      if (this.#loaded?.id === r.id) this.#loaded = null;
    }
  }

  #publish(next: TrustSnapshot): void {
    const previous = this.#snapshot;
    if (sameSnapshot(previous, next)) return;
    this.#snapshot = next;
    for (const listener of this.#listeners) {
      try {
        listener(next, previous);
      } catch (err) {
        this.o.logger.error({ err }, 'rotation: a trust listener failed');
      }
    }
  }
}

/** Equal by what matters: the rotation and every key (by its public half), certificate and trust list. */
function sameSnapshot(a: TrustSnapshot, b: TrustSnapshot): boolean {
  const view = (s: TrustSnapshot) =>
    JSON.stringify({
      rotation: s.rotation,
      signing: s.signingUserCa.publicKey.toString('base64'),
      accepted: s.acceptedUserCas.map((k) => k.toString('base64')),
      hostKey: s.hostKey.publicKey.toString('base64'),
      hostCertificate: s.hostCertificate,
      hostCa: s.hostCa.toString('base64'),
      tls: s.tls?.cert ?? null,
      otherTls: s.otherTls.map((t) => t.cert),
      trust: s.trust,
    });
  return view(a) === view(b);
}

/**
 * Reads the data directory and the store (applying what was committed while
 * this node was down), then follows the store. A rotation it cannot follow
 * (a seal that does not open) is logged and retried at each poll, and the
 * node starts on the keys it holds: a broker that refused to start could
 * not be asked to roll the rotation back.
 */
export async function startRotationFollower(o: RotationFollowerOptions): Promise<RotationFollower> {
  const follower = new Follower(o, await loadCurrentKeys(o.paths, { insecureHttp: o.config.api.insecureHttp, passphrase: o.passphrase, backupPins: o.config.api.backupPins }));
  await follower.refresh().catch(() => undefined);
  follower.follow();
  return follower;
}
