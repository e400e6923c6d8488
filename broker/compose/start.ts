/**
 * A running broker: opens the store, loads the keys, rebuilds the KRL,
 * starts the SSH side (embedded gateway, or OpenSSH-mode files for a system
 * sshd) and the HTTPS API, and wires revocation from the control plane to
 * the data plane. Each piece is built after what it needs, so nothing
 * refers to a piece made later; close() undoes it all, last piece first.
 */
import { rm } from 'node:fs/promises';
import { createServer as createHttpServer, type RequestListener, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { formatPublicKey, writeFileAtomic } from '../../ca/index.js';
import { createAccessLayer, UNKNOWN_PRESENCE, type AccessLayer } from '../proxy/index.js';
import { loadOrCreateSessionSecret } from '../proxy/session-cookie.js';
import { FleetEvents } from '../core/fleet-events.js';
import { announcingPresence, startTunnelSampler } from './fleet-watch.js';
import { implicitTrustProxyWarning, splitHostPort, trustsProxy, type BrokerConfig } from '../core/config.js';
import { isWildcardAddress } from '../core/net-address.js';
import { configuredSshEndpoints } from '../core/ssh-endpoints.js';
import type { CoreDeps, CoreHooks } from '../core/deps.js';
import { prepareClusterNode, type ClusterNode, type NodeEndpoints } from './cluster-nodes.js';
import { limitConnections } from './connection-limits.js';
import { brokerHostnames, dataPaths, localApiUrl } from './data-dir.js';
import { createApp } from '../http/app.js';
import { consoleSingleSignOn } from '../http/console-seam.js';
import type { HttpDeps } from '../http/context.js';
import { readOidcClientSecret } from '../oidc/index.js';
import { ephemeralOverlapWarning, readEphemeralRange } from './ephemeral-ports.js';
import type { Logger } from '../telemetry/logger.js';
import { startAuditFlush, startMaintenance, startReconciliation } from './maintenance.js';
import { FailureAggregator } from '../core/failure-audit.js';
import { BrokerMetrics } from '../telemetry/metrics.js';
import { RevocationList } from './revocation-list.js';
import { startSshSide, type SshSide } from './ssh-side.js';
import { startClusterEvents } from './cluster-events.js';
import { openStore } from '../store/index.js';
import { createClusterRelay } from './cluster-relay.js';
import { storeLocation } from './store-location.js';
import { loadNodeIdentity } from './node-identity.js';
import { startRotationFollower } from './rotation-follower.js';
import { userCasChanged, type TrustRoots, type TrustSnapshot } from '../core/trust-roots.js';
import type { Store } from '../store/types.js';
import { DEVICE_LOGIN, type SshEndpointWire } from '../../api/index.js';
import { retiredTlsIdentities, startApiTls, type ApiTls } from './api-tls.js';

export interface StartBrokerOptions {
  readonly config: BrokerConfig;
  readonly logger: Logger;
  /** Decrypts the CA keys if they are encrypted. */
  readonly passphrase?: string;
  readonly clock?: () => Date;
  /** Where CERTUNNEL_DATABASE_URL is read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  /** What this node registers for the node-to-node link (cluster-nodes.ts); absent: none. */
  readonly cluster?: Pick<NodeEndpoints, 'internalAddress' | 'relayKey'>;
  /** The trust roots (tests); absent: this node's rotation follower keeps them from the store and the data directory. */
  readonly trustRoots?: TrustRoots;
}

export interface RunningBroker {
  readonly apiUrl: string;
  readonly apiPort: number;
  readonly sshPort: number;
  readonly store: Store;
  readonly core: CoreDeps;
  readonly revocations: RevocationList;
  readonly ssh: SshSide;
  readonly access: AccessLayer;
  readonly node: ClusterNode;
  close(): Promise<void>;
}

/** What the configuration may get wrong without being invalid: said once, at start. */
function warnAboutConfig(config: BrokerConfig, logger: Logger): void {
  const overlap = ephemeralOverlapWarning(config.ports, readEphemeralRange());
  if (overlap) logger.warn({ pool: config.ports }, overlap);
  const implicitTrust = implicitTrustProxyWarning(config.api);
  if (implicitTrust) logger.warn({ setting: 'api.trustProxy' }, implicitTrust);
}

/** Shutdown steps, run last-added first; a failing step is logged and the others still run. */
function shutdownSteps(logger: Logger): { add(step: () => Promise<void>): void; run(): Promise<void> } {
  const steps: Array<() => Promise<void>> = [];
  return {
    add: (step) => void steps.push(step),
    run: async () => {
      for (const step of [...steps].reverse()) await step().catch((err: unknown) => logger.error({ err }, 'shutdown step failed'));
    },
  };
}

/** What devices are told about the SSH server: where it is, the login, and the host key and host CA of the start (grants take the current ones from the trust snapshot). */
function sshEndpointOf(config: BrokerConfig, sshPort: number, keys: Pick<TrustSnapshot, 'hostKey' | 'hostCa'>): SshEndpointWire {
  const sshListen = splitHostPort(config.ssh.listen);
  return {
    host: config.ssh.publicHost ?? (isWildcardAddress(sshListen.host) ? config.domain : sshListen.host),
    port: config.ssh.publicPort ?? sshPort,
    username: DEVICE_LOGIN,
    hostKey: formatPublicKey(keys.hostKey.publicKey),
    hostCertificateAuthority: formatPublicKey(keys.hostCa),
  };
}

/**
 * After a revocation commits (or is asked for again), in this order: the
 * device is denied in memory, the SSH side ends its live tunnel, the proxy
 * forgets it — none of which touches a file — then the KRL is rewritten
 * (a failing write is retried by the revocation list, and loud) and, in
 * OpenSSH mode, whatever logged in before the KRL landed is ended too.
 * After a key rotation: the old serials denied in memory, the KRL written,
 * then the sessions made with them ended. The hooks never reject: a store
 * that cannot be read is logged, and the reconciliation catches up.
 */
function revocationHooks(parts: { revocations: RevocationList; ssh: SshSide; access: AccessLayer; logger: Logger; events: FleetEvents }): CoreHooks {
  const { revocations, ssh, access, logger, events } = parts;
  const writeKrl = async (): Promise<boolean> =>
    revocations.refresh().catch((err: unknown) => {
      logger.error({ err }, 'KRL rebuild failed; the reconciliation will retry');
      return false;
    });
  const endTunnels = (deviceId: string): Promise<void> =>
    ssh.deviceRevoked(deviceId).catch((err: unknown) => logger.error({ err, deviceId }, 'ending the revoked device sessions failed'));
  return {
    deviceRevoked: async (deviceId) => {
      revocations.deny({ deviceIds: [deviceId] });
      await endTunnels(deviceId);
      access.deviceRevoked(deviceId);
      events.devicesChanged(deviceId);
      const written = await writeKrl();
      await endTunnels(deviceId);
      logger.info({ deviceId, krlWritten: written }, 'device revoked: denied in memory, live sessions closed');
    },
    certificatesRevoked: async (deviceId, serials) => {
      revocations.deny({ serials });
      const written = await writeKrl();
      await ssh.certificatesRevoked(deviceId, serials).catch((err: unknown) => logger.error({ err, deviceId }, 'ending the rotated key sessions failed'));
      logger.info({ deviceId, serials: serials.map(String), krlWritten: written }, 'key rotated: the old key certificates revoked and their sessions closed');
    },
  };
}

function listen(server: HttpServer, hostPort: string): Promise<number> {
  const { host, port } = splitHostPort(hostPort);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/**
 * The API's server (HTTPS, or plain HTTP with api.insecureHttp): device hostnames to the proxy, the rest to koa.
 * Anyone can connect, so every stage has a deadline (TLS handshake, headers, the whole request, keep-alive idle)
 * and sockets are capped per source and in all (connection-limits.ts).
 */
async function startApiServer(config: BrokerConfig, tls: ApiTls | undefined, access: AccessLayer, koa: RequestListener, logger: Logger): Promise<{ port: number; close(): Promise<void> }> {
  const { api } = config;
  const listener = access.requestListener(koa);
  // How often node looks for requests past their deadlines (its default, 30 s, would let them run that much longer).
  const timing = { connectionsCheckingInterval: 1000 };
  const https = tls ? createHttpsServer({ ...tls.serverOptions(), handshakeTimeout: api.handshakeTimeoutSeconds * 1000, ...timing }, listener) : undefined;
  if (https) tls?.attach(https);
  const server = https ?? createHttpServer(timing, listener);
  server.on('upgrade', (req, socket, head) => access.onUpgrade(req, socket, head));
  server.requestTimeout = config.proxy.enabled ? config.proxy.requestTimeoutSeconds * 1000 : 30_000;
  server.headersTimeout = Math.min(api.headersTimeoutSeconds * 1000, server.requestTimeout);
  server.keepAliveTimeout = api.keepAliveTimeoutSeconds * 1000;
  limitConnections(server, { perSource: trustsProxy(api) ? undefined : api.maxConnectionsPerSource, total: api.maxConnections }, logger);
  const port = await listen(server, config.api.listen);
  const close = (): Promise<void> =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return { port, close };
}

export async function startBroker(options: StartBrokerOptions): Promise<RunningBroker> {
  const { config, logger } = options;
  const clock = options.clock ?? (() => new Date());
  warnAboutConfig(config, logger);
  const paths = dataPaths(config.dataDir);
  const location = await storeLocation(paths, options.env);
  const store = await openStore({
    ...location,
    onConnectionError: (err) => logger.warn({ code: (err as { code?: unknown }).code }, 'database connection lost; the pool reconnects'),
  });
  const shutdown = shutdownSteps(logger);
  shutdown.add(() => store.close());
  try {
    // First: it applies a rotation committed while this node was down to the data directory's keys, which the rest loads.
    const follower = options.trustRoots
      ? undefined
      : await startRotationFollower({
          store, config, logger, clock, paths, passphrase: options.passphrase, nodeId: (await loadNodeIdentity(paths)).id,
          ...(location.databaseUrl !== undefined ? { databaseUrl: location.databaseUrl } : {}),
        });
    if (follower) shutdown.add(() => follower.close());
    const trustRoots = options.trustRoots ?? follower!;
    // The keys the follower loaded (the data directory's, a missed commit applied): not read a second time.
    const keys = trustRoots.current();
    const revocations = new RevocationList(store, keys.acceptedUserCas[0]!, paths.krl, clock, { logger });
    shutdown.add(async () => revocations.close());
    // The KRL has a section per accepted user CA (both during a user-ca rotation).
    revocations.useUserCaKeys(keys.acceptedUserCas);
    const stopKrlFollow = trustRoots.onChange((next, previous) => {
      // Only a user-ca rotation changes the KRL's sections; other roots' phases leave it alone.
      if (!userCasChanged(next, previous)) return;
      revocations.useUserCaKeys(next.acceptedUserCas);
      revocations.refresh().catch((err: unknown) => logger.error({ err }, 'KRL rebuild after a trust change failed; retried by reconciliation'));
    });
    shutdown.add(async () => stopKrlFollow());
    // A KRL that cannot be written does not stop the start: memory has the store's revocations, and the write is retried.
    await revocations.refresh();
    const metrics = new BrokerMetrics(store, config, clock);
    metrics.attachRevocations(revocations);
    const stopMaintenance = startMaintenance({
      store, revocations, clock, logger,
      // Renewal within the grace period needs the last certificate of a device.
      keepExpiredCertificatesMs: (config.certs.renewGraceSeconds + 86400) * 1000,
      keepAuditFailuresMs: config.audit.failureRetentionDays * 86400_000,
    });
    shutdown.add(async () => stopMaintenance());
    const failureAudit = new FailureAggregator(store, config.audit.aggregateSeconds * 1000);
    shutdown.add(startAuditFlush(failureAudit, { clock, logger, windowMs: config.audit.aggregateSeconds * 1000 }));

    const node = await prepareClusterNode({ store, config, logger, clock, paths });
    shutdown.add(() => node.stop());
    // Several nodes share a PostgreSQL store: this node's id names its presence and its events connection.
    const clustered = location.databaseUrl !== undefined;
    // The node-to-node link (cluster-relay.ts), when this node has cluster.internalListen.
    const relay = config.cluster.internalListen
      ? await createClusterRelay({ config, logger, store, clock, trustRoots, revocations, nodeId: node.identity.id })
      : undefined;
    if (relay) shutdown.add(() => relay.close());
    const events = new FleetEvents();
    const ssh = await startSshSide({
      config, logger, store: announcingPresence(store, events), clock, trustRoots, revocations, paths,
      ...(clustered || relay ? { cluster: { nodeId: node.identity.id } } : {}), remoteReach: relay?.remoteReach,
    });
    shutdown.add(() => ssh.close());
    await relay?.listen(ssh.presence);
    if (ssh.statsSource) metrics.attachGateway(ssh.statsSource);
    if (ssh.presenceWrites) metrics.attachPresenceWrites(ssh.presenceWrites);

    // The rules' dependencies but their hooks: the revocation hook needs the access layer, which needs these.
    const sshEndpoint = sshEndpointOf(config, ssh.port, keys);
    // Devices' endpoints: ssh.endpoints when the operator set it (a load
    // balancer, DNS), else the nodes up at the last heartbeat (this one first).
    const configured = configuredSshEndpoints(config, sshEndpoint);
    const sshEndpoints = () => {
      if (config.ssh.endpoints !== undefined) return configured;
      const live = node.sshEndpoints();
      return live.length > 0 ? [...live] : configured;
    };
    const coreBase = {
      store, config, clock, ssh: sshEndpoint, sshEndpoints, trustRoots,
    };
    const access = await createAccessLayer({
      core: coreBase, logger, presence: relay && ssh.presence ? relay.presence(ssh.presence) : (ssh.presence ?? UNKNOWN_PRESENCE), sessionKeyPath: paths.proxySessionKey, reservedHosts: brokerHostnames(config), metrics,
    });
    shutdown.add(async () => access.close());
    // Failures on the API are aggregated; the proxy bounds its own with its failed-key limiter and audit window.
    const core: CoreDeps = { ...coreBase, trustRoots, ...(follower ? { rotation: follower } : {}), failureAudit, hooks: revocationHooks({ revocations, ssh, access, logger, events }) };
    const stopReconciliation = startReconciliation({ revocations, ssh, logger, intervalMs: config.ssh.reconcileSeconds * 1000 });
    shutdown.add(async () => stopReconciliation());
    if (location.databaseUrl !== undefined) {
      const clusterEvents = startClusterEvents({ databaseUrl: location.databaseUrl, nodeId: node.identity.id, logger, hooks: core.hooks, revocations, ssh, ...(ssh.loginCache ? { loginCache: ssh.loginCache } : {}) });
      shutdown.add(() => clusterEvents.close());
    }

    const sampler = startTunnelSampler({ store, clock, logger, intervalMs: 60_000, keep: 24 * 60 });
    shutdown.add(async () => sampler.stop());
    const consoleDeps = {
      sessionSecret: await loadOrCreateSessionSecret(paths.consoleSessionKey), events, tunnelSamples: sampler.samples, krlVersion: () => revocations.version, startedAt: clock(),
    };
    // Single sign-on (config.oidc): a success opens a console session; the public URL is known once the API listens.
    let apiUrl = config.api.publicUrl ?? '';
    const oidc = config.oidc
      ? consoleSingleSignOn(
          {
            config: config.oidc, publicUrl: () => apiUrl, clientSecret: await readOidcClientSecret(config.oidc, config.dataDir, options.env ?? process.env),
            sessionSecret: consoleDeps.sessionSecret, audit: store, failureAudit, clock, logger,
          },
          () => httpDeps,
        )
      : undefined;
    // The API's TLS identities follow the snapshot (SNI for a rotation's other ones); the own certificate is renewed.
    const retired = config.api.insecureHttp
      ? []
      : await retiredTlsIdentities({ store, paths, graceMs: config.certs.renewGraceSeconds * 1000, now: clock().getTime(), logger });
    const apiTls = startApiTls({ config, paths, trustRoots, clock, logger, metrics, retired });
    shutdown.add(async () => apiTls?.close());
    const httpDeps: HttpDeps = {
      core, logger, metrics, revocations, access, problems: () => [...ssh.problems(), ...(apiTls?.problem() ? [apiTls.problem()!] : [])], console: consoleDeps, ...(oidc ? { oidc } : {}),
    };
    const app = createApp(httpDeps);
    const api = await startApiServer(config, apiTls?.tls, access, app.callback(), logger);
    shutdown.add(() => api.close());
    apiUrl = config.api.publicUrl ?? localApiUrl(config, api.port);
    oidc?.ready().catch((err: unknown) => logger.warn({ code: (err as { code?: unknown }).code }, 'single sign-on: the provider cannot be reached yet (sign-ins retry discovery)'));
    await writeFileAtomic(paths.runtime, `${JSON.stringify({ pid: process.pid, apiUrl, apiPort: api.port, sshPort: ssh.port, startedAt: clock().toISOString() })}\n`, { mode: 0o600 });
    shutdown.add(() => rm(paths.runtime, { force: true }));
    await node.start({ sshEndpoint: { host: core.ssh.host, port: core.ssh.port }, apiUrl, ...(relay ? relay.registration() : {}), ...options.cluster });
    // Registered: this node's ack of a rotation under way can land now.
    await follower?.refresh().catch(() => undefined);
    logger.info({ apiUrl, sshPort: ssh.port, sshMode: config.ssh.mode }, 'broker started');
    return { apiUrl, apiPort: api.port, sshPort: ssh.port, store, core, revocations, ssh, access, node, close: () => shutdown.run() };
  } catch (err) {
    await shutdown.run();
    throw err;
  }
}
