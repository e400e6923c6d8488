/**
 * The broker's SSH side, in either mode, behind one small interface:
 * - embedded: the ssh2 gateway in this process;
 * - openssh: the files a stock sshd needs, rewritten when revocations
 *   change, the sshd session holding a revoked device's ports ended, and
 *   presence read from the kernel's listening sockets.
 */
import { join } from 'node:path';
import { fingerprint, writeFileAtomic, type PortBlock, type PublicKey } from '../../ca/index.js';
import { blockPorts, DEVICE_LOGIN, OPERATOR_LOGIN } from '../../api/index.js';
import type { LocalTunnelPresence } from '../core/presence.js';
import { PresenceWriter } from '../core/presence-writer.js';
import { splitHostPort, type BrokerConfig } from '../core/config.js';
import { parseMaxStartups } from '../core/rate-limit.js';
import type { DataPaths } from './data-dir.js';
import type { Logger } from '../telemetry/logger.js';
import type { GatewayStatsSource, PresenceWriteStatsSource } from '../telemetry/metrics.js';
import { OPENSSH_FILES, renderTrustedUserCas, writeOpensshFiles } from '../openssh/config-files.js';
import { OpensshPresence } from '../openssh/presence.js';
import { judgeSshdPort, readSshdPorts } from '../openssh/sshd-port.js';
import { scanHostKeys, type ServedHostKeys, type SshdReloadSettings } from '../openssh/sshd-reload.js';
import { SshdHostKeyFollower } from './openssh-host-key.js';
import { killSessionsHoldingPorts, ticksSinceBoot } from '../openssh/session-killer.js';
import type { RevocationList } from './revocation-list.js';
import { userCasChanged, type TrustRoots, type TrustSnapshot } from '../core/trust-roots.js';
import { createGateway, type Gateway, type GatewayDeps, type GatewayLimits } from '../ssh/index.js';
import { IssuedCache } from '../ssh/issued-cache.js';
import { activeDevices, type Store } from '../store/index.js';

export interface SshSide {
  /** The port the SSH server listens on (the gateway's, or the configured sshd's). */
  readonly port: number;
  readonly statsSource?: GatewayStatsSource;
  /** The embedded gateway's presence writes (presence-writer.ts): pending, retried, dropped. */
  readonly presenceWrites?: PresenceWriteStatsSource;
  /** Which ports each device's tunnel holds (embedded gateway); absent in OpenSSH mode, where sshd holds them. */
  readonly presence?: LocalTunnelPresence;
  /** What needs an operator on this side, as /healthz codes (OpenSSH mode: SSHD_PORT_MISMATCH); empty when nothing does. */
  problems(): readonly string[];
  /** Ends the device's live tunnels now; no file is written (DESIGN: revocation does not depend on I/O). */
  deviceRevoked(deviceId: string): Promise<void>;
  /**
   * A rotation revoked the old key's certificates SERIALS: ends the device's
   * sessions made with them. Called after the KRL has been written, which
   * OpenSSH mode needs (it cannot see a session's serial, only when it began).
   */
  certificatesRevoked(deviceId: string, serials: readonly bigint[]): Promise<void>;
  /**
   * The periodic reconciliation: ends every live session that REVOCATIONS
   * (rebuilt from the store just before) denies, or, in OpenSSH mode, that
   * holds a block no active device owns; returns how many.
   */
  reconcile(revocations: Pick<RevocationList, 'isRevoked' | 'isDeviceRevoked'>): Promise<number>;
  /**
   * The device connected to another node at SINCE (cluster-events.ts): ends its sessions on this node that began
   * no later (embedded: the gateway's takeover; OpenSSH mode: the sshd sessions holding its block); returns how many.
   */
  deviceConnectedElsewhere(deviceId: string, since: Date): Promise<number>;
  /**
   * A cluster node that may have missed device.connected events (cluster-events.ts catching up): ends each of its
   * device sessions whose device the store says connected to another node later; returns how many (embedded only).
   */
  reconcileTakeovers?(): Promise<number>;
  /** Cluster nodes' embedded gateway: the records logins fall back on while the store is unavailable. */
  readonly loginCache?: IssuedCache;
  close(): Promise<void>;
}

export interface SshSideOptions {
  readonly config: BrokerConfig;
  readonly logger: Logger;
  readonly store: Store;
  readonly clock: () => Date;
  /** What is presented (host key and certificate) and accepted (user CAs), followed on change: a rotation needs no restart. */
  readonly trustRoots: TrustRoots;
  readonly revocations: RevocationList;
  readonly paths: DataPaths;
  /** A node of a cluster (PostgreSQL store): presence names it, and logins may fall back on the login cache. */
  readonly cluster?: { readonly nodeId: string };
  /** Several nodes: an operator's connection to a tunnel another node holds (cluster-relay.ts). */
  readonly remoteReach?: GatewayDeps['remoteReach'];
}

/** How long the store's word on a serial stands in for it while it is unavailable, and how many serials are kept. */
const LOGIN_CACHE = { ttlMs: 60 * 60_000, maxEntries: 100_000 };

/** How long close() waits for the gateway's last presence writes (every device going offline) to land. */
const PRESENCE_FLUSH_MS = 10_000;

/**
 * The gateway lives in this process, so at start no device is connected to
 * it, whatever the store says (a crash or a restore leaves stale flags).
 */
async function markEveryDeviceOffline(store: Store, now: Date, node: string | undefined): Promise<number> {
  let changed = 0;
  for await (const device of activeDevices(store)) {
    // In a cluster, only this node's: a device online on another node is not this restart's business.
    if (!device.online || (node !== undefined && device.nodeId !== null && device.nodeId !== node)) continue;
    await store.setDeviceOnline(device.id, { online: false, since: null, remoteAddr: null, lastSeen: device.lastSeenAt ?? now, node });
    changed++;
  }
  return changed;
}

/** ssh.maxStartups, perSourceMaxStartups, loginGraceSeconds and maxSessionsPerDevice as the gateway's limits. */
function startupLimits(config: BrokerConfig): GatewayLimits {
  const { ssh } = config;
  const startups = parseMaxStartups(ssh.maxStartups)!; // the config schema checked it
  return {
    earlyDropStart: startups.start, earlyDropRate: startups.rate, maxUnauthenticated: startups.full,
    maxUnauthenticatedPerSource: ssh.perSourceMaxStartups, authTimeoutMs: ssh.loginGraceSeconds * 1000, maxSessionsPerCertificate: ssh.maxSessionsPerDevice,
  };
}

/** The login cache of a cluster node: never for a serial or device the revocation list denies. */
function newLoginCache(o: SshSideOptions): IssuedCache {
  return new IssuedCache({
    ...LOGIN_CACHE,
    clock: o.clock,
    seenRevoked: ({ serial, keyId, deviceId }) => o.revocations.isRevoked({ serial, keyId }) || (deviceId !== null && o.revocations.isDeviceRevoked(deviceId)),
  });
}

/** SshSide.reconcileTakeovers for the embedded gateway: one store read per device with a session here. */
async function reconcileTakeovers(store: Store, gateway: Pick<Gateway, 'sessions' | 'takeOverDevice'>, node: string): Promise<number> {
  let ended = 0;
  const devices = new Set(gateway.sessions().flatMap((s) => (s.role === 'device' && s.deviceId ? [s.deviceId] : [])));
  for (const id of devices) {
    const device = await store.findDevice(id);
    if (!device?.online || device.nodeId === null || device.nodeId === node || !device.connectedSince) continue;
    ended += gateway.takeOverDevice(id, device.connectedSince);
  }
  return ended;
}

/** A rotation changed the host key or certificate: new connections get them; a bad pair is refused loudly, the old kept. */
function showNewHostIdentity(gateway: Pick<Gateway, 'setHostIdentity'>, next: TrustSnapshot, previous: TrustSnapshot, log: Logger): void {
  if (next.hostKey === previous.hostKey && next.hostCertificate === previous.hostCertificate) return;
  try {
    gateway.setHostIdentity({ hostKey: next.hostKey, hostCertificate: next.hostCertificate });
    log.info({ hostKey: fingerprint(next.hostKey.publicKey) }, 'ssh gateway: new connections are shown this host key and its certificate');
  } catch (err) {
    log.error({ err, hostKey: fingerprint(next.hostKey.publicKey) }, 'ssh gateway: the new host certificate does not certify the new host key; still showing the old');
  }
}

async function startEmbedded(o: SshSideOptions): Promise<SshSide> {
  const log = o.logger.child({ component: 'ssh-gateway' });
  const node = o.cluster?.nodeId;
  const stale = await markEveryDeviceOffline(o.store, o.clock(), node);
  const loginCache = o.cluster ? newLoginCache(o) : undefined;
  const lookupIssued = (serial: bigint) => o.store.findIssuedCertificate(serial);
  if (stale > 0) log.info({ devices: stale }, 'marked devices offline that were online when the broker last stopped');
  // Presence is an event the gateway cannot wait for: the writer coalesces it per device and retries a busy store.
  const presence = new PresenceWriter({ store: o.store, logger: o.logger.child({ component: 'presence-writer' }) });
  const presented = o.trustRoots.current();
  const gateway = createGateway({
    hostKey: presented.hostKey,
    hostCertificate: presented.hostCertificate,
    // A getter: the gateway reads it at every login (a user-ca rotation accepts both CAs).
    get userCaKeys() {
      return o.trustRoots.current().acceptedUserCas;
    },
    // Only certificates naming a real block of this broker's pool get in.
    portPool: o.config.ports,
    isRevoked: (cert) => o.revocations.isRevoked(cert),
    // Defence in depth: only a certificate the store issued, as presented, for an active device's current block.
    lookupIssued: loginCache ? loginCache.wrap(lookupIssued) : lookupIssued,
    clock: o.clock,
    logger: log,
    audit: (event) => {
      o.store
        .appendAudit({ at: o.clock(), actor: event.actor, action: event.action, target: event.target ?? null, remoteAddr: event.remoteAddr ?? null, outcome: event.outcome, details: event.details })
        .catch((err: unknown) => log.error({ err }, 'audit write failed'));
    },
    presence: (update) => {
      const now = o.clock();
      presence.update(update.deviceId, { online: update.online, since: update.online ? (update.since ?? now) : null, remoteAddr: update.remoteAddr ?? null, lastSeen: now, node });
    },
    resolveDevice: async (name) => {
      const device = await o.store.findDeviceByName(name);
      if (!device || device.status !== 'active' || device.portFirst === null || device.portLast === null) return undefined;
      return { deviceId: device.id, block: { first: device.portFirst, last: device.portLast } };
    },
    remoteReach: o.remoteReach,
    limits: { keepaliveIntervalMs: o.config.ssh.keepaliveIntervalSeconds * 1000, keepaliveCountMax: o.config.ssh.keepaliveCountMax, ...startupLimits(o.config) },
  });
  const stopFollowing = o.trustRoots.onChange((next, previous) => {
    showNewHostIdentity(gateway, next, previous, log);
    // A user CA retired by a committed rotation: the sessions it let in end with it (a leaked CA's too).
    if (!retiresUserCa(next, previous)) return;
    const ended = gateway.endSessionsOfRetiredCas(next.acceptedUserCas);
    if (ended > 0) log.info({ sessions: ended }, 'ended the sessions of a retired user CA');
  });
  const { host, port } = splitHostPort(o.config.ssh.listen);
  const bound = await gateway.listen(port, host).catch((err: unknown) => {
    stopFollowing();
    throw err;
  });
  return {
    port: bound.port,
    statsSource: gateway,
    presenceWrites: presence,
    presence: {
      forwardedPorts: (deviceId) => gateway.tunnelPorts(deviceId),
      dial: (deviceId, port, origin) => gateway.dialTunnel(deviceId, port, origin),
    },
    deviceRevoked: async (deviceId) => gateway.revokeDevice(deviceId),
    certificatesRevoked: async (_deviceId, serials) => {
      const revoked = new Set(serials);
      gateway.endRevokedSessions((cert) => revoked.has(cert.serial));
    },
    reconcile: async (revocations) => gateway.endRevokedSessions((cert) => revocations.isRevoked(cert)),
    deviceConnectedElsewhere: async (deviceId, since) => gateway.takeOverDevice(deviceId, since),
    ...(node === undefined ? {} : { reconcileTakeovers: () => reconcileTakeovers(o.store, gateway, node) }),
    ...(loginCache ? { loginCache } : {}),
    problems: () => [],
    close: async () => {
      stopFollowing();
      // Every session's offline is queued by now; what does not land in time the next start corrects (markEveryDeviceOffline).
      await gateway.close();
      await presence.close(PRESENCE_FLUSH_MS);
    },
  };
}

/** What sshd serves, dialled on 127.0.0.1 at the port sshd -T says it listens on (else the devices' port). */
async function scanSshd(o: SshSideOptions): Promise<ServedHostKeys | null> {
  const read = await readSshdPorts({ sshdPath: o.config.ssh.sshdPath, configPath: o.config.ssh.sshdConfig });
  const port = 'ports' in read ? read.ports[0] : (o.config.ssh.publicPort ?? splitHostPort(o.config.ssh.listen).port);
  return port ? scanHostKeys('127.0.0.1', port) : null;
}

function sshdReloadSettings(config: BrokerConfig): SshdReloadSettings | null {
  const { sshdReloadCommand, sshdPidFile, sshdPath, sshdConfig } = config.ssh;
  if (sshdReloadCommand) return { command: sshdReloadCommand };
  return sshdPidFile ? { pidFile: sshdPidFile, sshdPath, sshdConfig } : null;
}

/** A user CA accepted before is not any more (a user-ca rotation committed, or a prepare rolled back). */
function retiresUserCa(next: TrustSnapshot, previous: TrustSnapshot): boolean {
  return !previous.acceptedUserCas.every((k) => next.acceptedUserCas.some((n) => n.equals(k)));
}

async function startOpenssh(o: SshSideOptions): Promise<SshSide> {
  const outDir = join(o.config.dataDir, o.config.ssh.opensshDir);
  // TrustedUserCAKeys, HostKey and HostCertificate from the snapshot: a rotation rewrites them (openssh-host-key.ts).
  const writeFiles = async (snapshot: TrustSnapshot, hostKey: { hostKeyPath: string; hostCertificateFile: string }): Promise<void> => {
    await writeOpensshFiles({
      outDir,
      userCaKeys: snapshot.acceptedUserCas,
      ...hostKey,
      hostCertificate: snapshot.hostCertificate,
      krl: o.revocations.krl,
      pool: o.config.ports,
      deviceUser: DEVICE_LOGIN,
      operatorUser: OPERATOR_LOGIN,
      keepalive: { intervalSeconds: o.config.ssh.keepaliveIntervalSeconds, countMax: o.config.ssh.keepaliveCountMax },
      startups: { maxStartups: o.config.ssh.maxStartups, perSource: o.config.ssh.perSourceMaxStartups, loginGraceSeconds: o.config.ssh.loginGraceSeconds },
    });
  };
  const hostKeys = new SshdHostKeyFollower({
    outDir, writeFiles, reload: sshdReloadSettings(o.config), scan: () => scanSshd(o), logger: o.logger.child({ component: 'openssh' }),
    // A pending or failed reload is looked at again as often as live sessions are reconciled.
    retryMs: o.config.ssh.reconcileSeconds * 1000,
  });
  await hostKeys.start(o.trustRoots.current());
  const stopFollowing = o.trustRoots.onChange((next, previous) => {
    hostKeys.change(next, previous);
    // The accepted user CAs change in a user-ca rotation: sshd reads TrustedUserCAKeys at every login, no reload needed.
    if (!userCasChanged(next, previous)) return;
    writeFileAtomic(join(outDir, OPENSSH_FILES.userCa), renderTrustedUserCas(next.acceptedUserCas), { mode: 0o600 }).then(
      () => o.logger.info({ userCas: next.acceptedUserCas.length }, 'OpenSSH mode: rewrote TrustedUserCAKeys'),
      (err: unknown) => o.logger.error({ err }, 'OpenSSH mode: rewriting TrustedUserCAKeys failed; sshd accepts the user CAs of before'),
    );
  });
  o.logger.info({ outDir }, 'OpenSSH mode: wrote sshd configuration files');
  // The KRL changes on its own (a failed write is the revocation list's to retry); the host key files on a rotation.
  o.revocations.addWriter((krl) => writeFileAtomic(join(outDir, OPENSSH_FILES.krl), krl, { mode: 0o644 }));
  const presence = new OpensshPresence({
    store: o.store, pool: o.config.ports, clock: o.clock, logger: o.logger.child({ component: 'openssh-presence' }),
    intervalMs: o.config.ssh.presencePollSeconds * 1000, node: o.cluster?.nodeId,
  });
  await presence.start().catch((err: unknown) => {
    stopFollowing();
    hostKeys.close();
    throw err;
  });
  const killer = opensshKiller(o, presence);
  // A user CA retired by a committed rotation: sshd does not say which CA let a session in, so end what must have used it.
  const stopRetiring = o.trustRoots.onChange((next, previous) => {
    if (!retiresUserCa(next, previous)) return;
    endRetiredCaSessions(o, presence, killer, next.acceptedUserCas).catch((err: unknown) => o.logger.error({ err }, 'OpenSSH mode: ending the sessions of a retired user CA failed'));
  });
  const port = o.config.ssh.publicPort ?? splitHostPort(o.config.ssh.listen).port;
  const portProblem = await checkSshdPort(o, port);
  return {
    port,
    problems: () => [...(portProblem ? [portProblem] : []), ...(hostKeys.problem() ? [hostKeys.problem()!] : [])],
    deviceRevoked: async (deviceId) => {
      await killer.endDevice(deviceId, 'revoked');
      await presence.poll();
    },
    // sshd does not say which certificate a session used: end the device's sessions older than the KRL that lists the old serials.
    certificatesRevoked: async (deviceId) => void (await killer.endDevice(deviceId, 'key rotated', { startedBy: ticksSinceBoot() })),
    deviceConnectedElsewhere: async (deviceId, since) => {
      // Only if sshd here listens in its block (a reconnection storm elsewhere costs a look at /proc/net/tcp, shared).
      await presence.poll();
      if (![...presence.blockOwners().values()].includes(deviceId)) return 0;
      // /proc counts a process's start in ticks since boot (10 ms each): the sessions begun by SINCE, seen from now.
      const startedBy = ticksSinceBoot() - Math.max(0, Date.now() - since.getTime()) / 10;
      return (await killer.endDevice(deviceId, 'connected to another node', { startedBy })).length;
    },
    reconcile: async (revocations) => {
      await presence.poll();
      let ended = 0;
      for (const [first, owner] of presence.blockOwners()) {
        if (owner !== null && !revocations.isDeviceRevoked(owner)) continue;
        ended += (await killer.endBlock({ first, last: first + o.config.ports.perDevice - 1 }, owner, 'reconciliation')).length;
      }
      return ended;
    },
    close: async () => {
      stopFollowing();
      stopRetiring();
      hostKeys.close();
      await presence.close();
    },
  };
}

/**
 * Asks the operator's sshd (`sshd -T`) which ports it listens on and says so, with a warning naming the fix when
 * devices are told another one; returns the /healthz problem, if any. If sshd cannot say, that is a warning too.
 */
async function checkSshdPort(o: SshSideOptions, devicePort: number): Promise<string | null> {
  const { sshdPath, sshdConfig } = o.config.ssh;
  const log = o.logger.child({ component: 'openssh' });
  const read = await readSshdPorts({ sshdPath, configPath: sshdConfig });
  if ('error' in read) {
    log.warn({ code: 'SSHD_CHECK_FAILED', sshdPath, sshdConfig, devicePort, reason: read.error },
      `OpenSSH mode: could not ask sshd which port it listens on (sshd -T -f ${sshdConfig}); make sure it is ${devicePort}, the port devices are told, or set ssh.publicPort`);
    return null;
  }
  const verdict = judgeSshdPort(read.ports, devicePort, o.config.ssh.publicPort !== undefined);
  const fields = { code: verdict.code ?? undefined, sshdPorts: read.ports, devicePort, sshdConfig };
  const problem = verdict.declared ? null : verdict.code;
  if (problem) log.warn(fields, `OpenSSH mode: ${verdict.message}`);
  else log.info(fields, `OpenSSH mode: ${verdict.message}`);
  return problem;
}

/** Ends sshd sessions by port block, asking presence which process holds each listener before scanning /proc. */
function opensshKiller(o: SshSideOptions, presence: OpensshPresence) {
  const endBlock = async (block: PortBlock, deviceId: string | null, why: string, options: { startedBy?: number } = {}): Promise<number[]> => {
    const killed = killSessionsHoldingPorts(blockPorts(block), { cache: presence.pids, ...options });
    if (killed.length > 0) o.logger.info({ deviceId, block, killed, why }, 'OpenSSH mode: ended the sshd sessions holding a revoked port block');
    return killed;
  };
  return {
    endBlock,
    endDevice: async (deviceId: string, why: string, options: { startedBy?: number } = {}): Promise<number[]> => {
      const device = await o.store.findDevice(deviceId);
      if (!device || device.portFirst === null || device.portLast === null) return [];
      return endBlock({ first: device.portFirst, last: device.portLast }, deviceId, why, options);
    },
  };
}

/**
 * The sshd sessions of devices that logged in with a certificate of a user
 * CA no longer accepted: a device's sessions that began before it was first
 * issued a certificate by an accepted CA (all of them when it never was).
 * A session begun later used a certificate of an accepted CA: agents use
 * their newest certificate.
 */
async function endRetiredCaSessions(o: SshSideOptions, presence: OpensshPresence, killer: ReturnType<typeof opensshKiller>, accepted: readonly PublicKey[]): Promise<number> {
  const acceptedFingerprints = new Set(accepted.map((k) => fingerprint(k)));
  await presence.poll();
  let ended = 0;
  for (const deviceId of new Set(presence.blockOwners().values())) {
    if (deviceId === null) continue;
    const certs = await o.store.listCertificatesOfDevice(deviceId, 50);
    const firstAccepted = Math.min(...certs.filter((c) => c.signedBy !== null && acceptedFingerprints.has(c.signedBy)).map((c) => c.issuedAt.getTime()));
    // /proc counts a process's start in ticks since boot (10 ms each).
    const startedBy = ticksSinceBoot() - (Number.isFinite(firstAccepted) ? Math.max(0, o.clock().getTime() - firstAccepted) / 10 : 0);
    ended += (await killer.endDevice(deviceId, 'user CA retired', { startedBy })).length;
  }
  if (ended > 0) o.logger.info({ sessions: ended }, 'ended the sessions of a retired user CA');
  return ended;
}

export function startSshSide(options: SshSideOptions): Promise<SshSide> {
  return options.config.ssh.mode === 'openssh' ? startOpenssh(options) : startEmbedded(options);
}
