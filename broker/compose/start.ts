/**
 * A running broker: opens the store, loads the keys, rebuilds the KRL,
 * starts the HTTPS API and the SSH side (embedded gateway, or OpenSSH-mode
 * files for a system sshd), and wires revocation from the control plane to
 * the data plane. close() undoes it all.
 */
import { readFile, rm } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { formatPublicKey, loadKeyPair, loadPublicKey, writeFileAtomic } from '../../ca/index.js';
import { createAccessLayer, UNKNOWN_PRESENCE, type AccessLayer } from '../proxy/index.js';
import { implicitTrustProxyWarning, splitHostPort, type BrokerConfig } from '../core/config.js';
import type { CoreDeps } from '../core/deps.js';
import { brokerHostnames, dataPaths } from './data-dir.js';
import { createApp } from '../http/app.js';
import { ephemeralOverlapWarning, readEphemeralRange } from './ephemeral-ports.js';
import type { Logger } from '../telemetry/logger.js';
import { startMaintenance } from './maintenance.js';
import { BrokerMetrics } from '../telemetry/metrics.js';
import { RevocationList } from './revocation-list.js';
import { startSshSide, type SshSide } from './ssh-side.js';
import { openStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import type { SshEndpointWire } from '../../api/device.js';
import { DEVICE_LOGIN } from '../../api/tunnel.js';

export interface StartBrokerOptions {
  readonly config: BrokerConfig;
  readonly logger: Logger;
  /** Decrypts the CA keys if they are encrypted. */
  readonly passphrase?: string;
  readonly clock?: () => Date;
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
  close(): Promise<void>;
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

function publicHost(listenHost: string, config: BrokerConfig): string {
  return listenHost === '0.0.0.0' || listenHost === '::' ? config.domain : listenHost;
}

export async function startBroker(options: StartBrokerOptions): Promise<RunningBroker> {
  const { config, logger } = options;
  const clock = options.clock ?? (() => new Date());
  const overlap = ephemeralOverlapWarning(config.ports, readEphemeralRange());
  if (overlap) logger.warn({ pool: config.ports }, overlap);
  const implicitTrust = implicitTrustProxyWarning(config.api);
  if (implicitTrust) logger.warn({ setting: 'api.trustProxy' }, implicitTrust);
  const paths = dataPaths(config.dataDir);
  const userCa = await loadKeyPair(paths.userCa, { passphrase: options.passphrase });
  const hostCaPublicKey = await loadPublicKey(`${paths.hostCa}.pub`);
  const hostKey = await loadKeyPair(paths.hostKey);
  const hostCertificate = (await readFile(paths.hostCert, 'utf8')).trim();
  const store = await openStore({ filename: paths.database });
  const closers: Array<() => Promise<void>> = [() => store.close()];
  const close = async (): Promise<void> => {
    for (const fn of closers.reverse()) await fn().catch((err: unknown) => logger.error({ err }, 'shutdown step failed'));
  };
  try {
    const revocations = new RevocationList(store, userCa.publicKey, paths.krl, clock);
    await revocations.refresh();
    const metrics = new BrokerMetrics(store, config, clock);
    const stopMaintenance = startMaintenance({
      store, revocations, clock, logger,
      // Renewal within the grace period needs the last certificate of a device.
      keepExpiredCertificatesMs: (config.certs.renewGraceSeconds + 86400) * 1000,
    });
    closers.push(async () => stopMaintenance());

    const ssh = await startSshSide({ config, logger, store, clock, userCa, hostKey, hostCertificate, revocations, paths });
    closers.push(() => ssh.close());
    if (ssh.statsSource) metrics.attachGateway(ssh.statsSource);

    const sshListen = splitHostPort(config.ssh.listen);
    const sshEndpoint: SshEndpointWire = {
      host: config.ssh.publicHost ?? publicHost(sshListen.host, config),
      port: config.ssh.publicPort ?? ssh.port,
      username: DEVICE_LOGIN,
      hostKey: formatPublicKey(hostKey.publicKey),
      hostCertificateAuthority: formatPublicKey(hostCaPublicKey),
    };
    const core: CoreDeps = {
      store, config, clock, ssh: sshEndpoint,
      ca: { userCa, hostCaPublicKey },
      hooks: {
        deviceRevoked: async (deviceId) => {
          await revocations.refresh();
          await ssh.deviceRevoked(deviceId);
          access.deviceRevoked(deviceId);
          logger.info({ deviceId }, 'device revoked; KRL rewritten and live sessions closed');
        },
      },
    };
    const access = await createAccessLayer({
      core, logger, presence: ssh.presence ?? UNKNOWN_PRESENCE, sessionKeyPath: paths.proxySessionKey, reservedHosts: brokerHostnames(config), metrics,
    });
    closers.push(async () => access.close());
    const apiPin = config.api.insecureHttp ? null : (await readFile(paths.apiPin, 'utf8')).trim();
    const app = createApp({
      core, logger, metrics, revocations, apiPin, access,
      publicKeys: { userCa: formatPublicKey(userCa.publicKey), hostCa: formatPublicKey(hostCaPublicKey), hostKey: sshEndpoint.hostKey },
    });
    // Device hostnames go to the HTTP proxy, everything else to the API.
    const listener = access.requestListener(app.callback());
    const server = config.api.insecureHttp
      ? createHttpServer(listener)
      : createHttpsServer({ key: await readFile(paths.tlsKey), cert: await readFile(paths.tlsCert) }, listener);
    server.on('upgrade', (req, socket, head) => access.onUpgrade(req, socket, head));
    server.keepAliveTimeout = 30_000;
    server.headersTimeout = 20_000;
    server.requestTimeout = config.proxy.enabled ? config.proxy.requestTimeoutSeconds * 1000 : 30_000;
    const apiPort = await listen(server, config.api.listen);
    closers.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    const apiHost = splitHostPort(config.api.listen).host;
    const scheme = config.api.insecureHttp ? 'http' : 'https';
    const apiUrl = config.api.publicUrl ?? `${scheme}://${apiHost === '0.0.0.0' || apiHost === '::' ? '127.0.0.1' : apiHost}:${apiPort}`;
    await writeFileAtomic(paths.runtime, `${JSON.stringify({ pid: process.pid, apiUrl, apiPort, sshPort: ssh.port, startedAt: clock().toISOString() })}\n`, { mode: 0o644 });
    closers.push(() => rm(paths.runtime, { force: true }));
    logger.info({ apiUrl, sshPort: ssh.port, sshMode: config.ssh.mode }, 'broker started');
    return { apiUrl, apiPort, sshPort: ssh.port, store, core, revocations, ssh, access, close };
  } catch (err) {
    await close();
    throw err;
  }
}
