/**
 * Operators reach any device through any node (docs/cluster.md, "Reaching
 * devices through any node"): the wiring of the node-to-node link.
 *
 * - This node's relay identity: an Ed25519 key made on first start
 *   (DIR/relay_ed25519, 0600) and a certificate for it signed by the
 *   cluster's user CA, key id and principal node:<id>, one hour long,
 *   re-signed at start and every 20 minutes (in memory only).
 * - The relay endpoint (broker/ssh/relay-server.ts) on cluster.internalListen:
 *   other nodes ask it for a port of a device whose tunnel is here.
 * - The other direction (broker/ssh/relay-client.ts): a device not held here
 *   is looked up in presence (devices.node_id); a live node there is asked
 *   over the link; a device on no node, or on a node that is down, stopped
 *   or offers no link, is DEVICE_OFFLINE at once.
 * - registration(): what this node publishes in the registry (nodes.internal_address,
 *   nodes.relay_key), for node registration (cluster-nodes.ts) to write.
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, parsePublicKey, saveKeyPair, signNodeCert, type KeyPair } from '../../ca/index.js';
import { TUNNEL_HOST } from '../../api/index.js';
import { splitHostPort, type BrokerConfig } from '../core/config.js';
import { isWildcardAddress } from '../core/net-address.js';
import type { LocalTunnelPresence, TunnelPresence } from '../core/presence.js';
import {
  authorizeRelayTarget,
  nodeLiveness,
  RelayClient,
  RelayDialError,
  RelayRefusal,
  RelayServer,
  type RegisteredNode,
  type RelayNodeIdentity,
} from '../ssh/index.js';
import type { TrustRoots } from '../core/trust-roots.js';
import type { Logger } from '../telemetry/logger.js';
import type { Store } from '../store/types.js';
import type { RevocationList } from './revocation-list.js';

export const RELAY_KEY_FILE = 'relay_ed25519';
const CERT_VALIDITY_S = 3600;
const CERT_REFRESH_MS = 20 * 60_000;
/** How long a registry answer is reused: the proxy asks once per request, and nodes change seldom. */
const LOOKUP_CACHE_MS = 1000;

/** Codes of the link that mean "the device's tunnel cannot be reached now": DEVICE_OFFLINE to an operator. */
const OFFLINE_CODES: ReadonlySet<string> = new Set(['DEVICE_OFFLINE', 'TUNNEL_NOT_CONNECTED', 'NODE_UNREACHABLE', 'RELAY_TIMEOUT']);

export interface ClusterRelayOptions {
  readonly config: BrokerConfig;
  readonly logger: Logger;
  readonly store: Store;
  readonly clock: () => Date;
  /** Relay certificates are signed by the snapshot's signing user CA and accepted from any accepted one (a user-ca rotation, live). */
  readonly trustRoots: TrustRoots;
  readonly revocations: Pick<RevocationList, 'isRevoked' | 'isDeviceRevoked'>;
  readonly nodeId: string;
}

export interface ClusterRelay {
  /** For the gateway: an operator's connection to a tunnel another node holds. */
  remoteReach(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
  /** LOCAL (this node's gateway) extended to tunnels on other nodes, for the HTTP proxy and operator certificates. */
  presence(local: LocalTunnelPresence): TunnelPresence;
  /** Starts the relay endpoint; LOCAL is how a device's tunnel here is reached (undefined: OpenSSH mode, sshd holds it on the loopback). */
  listen(local: LocalTunnelPresence | undefined): Promise<void>;
  /** What this node publishes in the registry; internalAddress is null until listen() (or without cluster.internalListen). */
  registration(): { internalAddress: string | null; relayKey: string };
  close(): Promise<void>;
}

async function loadOrCreateRelayKey(path: string): Promise<KeyPair> {
  try {
    return await loadKeyPair(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const pair = generateKeyPair();
    await saveKeyPair(path, pair, { comment: 'certunnel relay key' });
    return pair;
  }
}

/** Answers reused for LOOKUP_CACHE_MS; when the store fails, the last answer (any age) stands in, else the failure. */
function cachedLookup<T>(fetch: (key: string) => Promise<T>): (key: string) => Promise<T> {
  const cache = new Map<string, { value: T; at: number }>();
  return async (key) => {
    const hit = cache.get(key);
    const now = Date.now();
    if (hit && now - hit.at < LOOKUP_CACHE_MS) return hit.value;
    try {
      const value = await fetch(key);
      if (cache.size > 10_000) cache.clear();
      cache.set(key, { value, at: now });
      return value;
    } catch (err) {
      if (hit) return hit.value;
      throw err;
    }
  };
}

function offline(code: string, message: string): RelayDialError {
  return new RelayDialError(code, message);
}

export async function createClusterRelay(o: ClusterRelayOptions): Promise<ClusterRelay> {
  const log = o.logger.child({ component: 'cluster-relay' });
  const key = await loadOrCreateRelayKey(join(o.config.dataDir, RELAY_KEY_FILE));
  const certDeps = {
    // Read at each verification: a user-ca rotation changes it without a restart.
    get trustedCaKeys() {
      return o.trustRoots.current().acceptedUserCas;
    },
    isRevoked: (c: { serial: bigint; keyId: string }) => o.revocations.isRevoked(c),
  };
  const downAfterMs = o.config.cluster.downAfterSeconds * 1000;

  const sign = async (): Promise<string> => {
    const cert = signNodeCert({ ca: o.trustRoots.current().signingUserCa, publicKey: key.publicKey, nodeId: o.nodeId, serial: await o.store.nextSerial(), now: o.clock(), validitySeconds: CERT_VALIDITY_S });
    return formatCertificate(cert, cert.keyId);
  };
  let certificate = await sign();
  const refresh = setInterval(() => {
    sign().then(
      (line) => (certificate = line),
      (err: unknown) => log.error({ err }, 'relay certificate renewal failed; retrying at the next interval'),
    );
  }, CERT_REFRESH_MS);
  refresh.unref();
  // A new signing CA (a user-ca rotation's learn, or its commit): a certificate from it at once, before the old CA is retired.
  const unsubscribe = o.trustRoots.onChange((next, previous) => {
    if (next.signingUserCa === previous.signingUserCa) return;
    sign().then(
      (line) => (certificate = line),
      (err: unknown) => log.error({ err }, 'relay certificate renewal failed; retrying at the next interval'),
    );
  });

  const findNode = cachedLookup(async (id): Promise<RegisteredNode | undefined> => (await o.store.findNode(id)) ?? undefined);
  // Presence is read fresh: a device that just left must be DEVICE_OFFLINE at once, not a second later.
  const findDevice = (id: string) => o.store.findDevice(id);
  const client = new RelayClient({ nodeId: o.nodeId, key, certificateLine: () => certificate, certDeps, clock: o.clock, logger: log });

  /** The live node other than this one that holds DEVICEID's tunnel; a RelayDialError otherwise. */
  async function holderOf(deviceId: string): Promise<RegisteredNode & { internalAddress: string; relayKey: string }> {
    const device = await findDevice(deviceId);
    if (!device) throw offline('DEVICE_UNKNOWN', `there is no device ${deviceId}`);
    if (device.status !== 'active' || o.revocations.isDeviceRevoked(deviceId)) throw offline('DEVICE_REVOKED', `device ${deviceId} has been revoked`);
    if (device.nodeId === null || device.nodeId === o.nodeId) throw offline('DEVICE_OFFLINE', `device ${deviceId} has no tunnel on any node`);
    const node = await findNode(device.nodeId);
    const live = nodeLiveness(node, o.clock(), downAfterMs);
    if (!live.allow) throw offline('DEVICE_OFFLINE', `device ${deviceId} is on node ${device.nodeId}, which is not live (${live.reason})`);
    if (!node!.internalAddress || !node!.relayKey) throw offline('DEVICE_OFFLINE', `device ${deviceId} is on node ${device.nodeId}, which offers no relay`);
    return node as RegisteredNode & { internalAddress: string; relayKey: string };
  }

  async function remoteReach(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex> {
    const node = await holderOf(deviceId);
    const { host, port: relayPort } = splitHostPort(node.internalAddress);
    let relayKey;
    try {
      relayKey = parsePublicKey(node.relayKey);
    } catch {
      throw offline('DEVICE_OFFLINE', `node ${node.id} registered a relay key that is not a key`);
    }
    return client.dial({ id: node.id, host, port: relayPort, relayKey }, deviceId, port, origin);
  }

  /** B's side: PORT of DEVICEID for node FROM, exactly as a local operator connection would get it. */
  async function openTarget(local: LocalTunnelPresence | undefined, from: RelayNodeIdentity, deviceId: string, port: number): Promise<Duplex> {
    let device;
    try {
      device = await o.store.findDevice(deviceId);
    } catch {
      throw new RelayRefusal('STORE_UNAVAILABLE');
    }
    const verdict = authorizeRelayTarget(device ?? undefined, port, o.revocations.isDeviceRevoked(deviceId));
    if (!verdict.allow) throw new RelayRefusal(verdict.reason);
    const origin = { address: TUNNEL_HOST, port: 0 };
    if (local?.dial) {
      const ports = local.forwardedPorts(deviceId) ?? [];
      if (ports.length === 0) throw new RelayRefusal('DEVICE_OFFLINE');
      if (!ports.includes(port)) throw new RelayRefusal('TUNNEL_NOT_CONNECTED');
      return local.dial(deviceId, port, origin).catch(() => Promise.reject(new RelayRefusal('TUNNEL_NOT_CONNECTED')));
    }
    // OpenSSH mode: sshd holds the device's listener on this node's loopback; the block was checked above.
    void from;
    return new Promise((resolve, reject) => {
      const tcp = connect({ host: TUNNEL_HOST, port, noDelay: true, allowHalfOpen: true });
      tcp.once('connect', () => resolve(tcp));
      tcp.once('error', () => reject(new RelayRefusal('DEVICE_OFFLINE')));
    });
  }

  let server: RelayServer | undefined;
  let internalAddress: string | null = null;

  return {
    remoteReach,
    presence(local) {
      return {
        forwardedPorts: (deviceId) => {
          const here = local.forwardedPorts(deviceId);
          if (here === undefined || here.length > 0) return here;
          // Not here: on a live node elsewhere, the ports are that node's to know (undefined); else offline ([]).
          return holderOf(deviceId).then(
            () => undefined,
            (err: unknown) => (err instanceof RelayDialError && err.code === 'DEVICE_OFFLINE' ? [] : undefined),
          );
        },
        dial: (deviceId, port, origin) => {
          if ((local.forwardedPorts(deviceId) ?? []).includes(port) && local.dial) return local.dial(deviceId, port, origin);
          // The HTTP proxy reads ECONNREFUSED as DEVICE_OFFLINE.
          return remoteReach(deviceId, port, origin).catch((err: unknown) => {
            const code = err instanceof RelayDialError ? err.code : 'INTERNAL_ERROR';
            throw Object.assign(new Error(`relay: ${code}`), { code: OFFLINE_CODES.has(code) ? 'ECONNREFUSED' : code, relayCode: code });
          });
        },
      };
    },
    async listen(local) {
      const listenAt = o.config.cluster.internalListen;
      if (!listenAt) return;
      server = new RelayServer({
        hostKey: key, certificateLine: () => certificate, certDeps, clock: o.clock, downAfterMs, logger: log,
        lookupNode: (id) => findNode(id),
        openTarget: (from, deviceId, port) => openTarget(local, from, deviceId, port),
        audit: (event) => {
          o.store
            .appendAudit({ at: o.clock(), actor: event.actor, action: event.action, target: event.target ?? null, remoteAddr: event.remoteAddr ?? null, outcome: event.outcome, details: event.details })
            .catch((err: unknown) => log.error({ err }, 'audit write failed'));
        },
      });
      const { host, port } = splitHostPort(listenAt);
      const bound = await server.listen(port, host);
      if (o.config.cluster.internalAddress) internalAddress = o.config.cluster.internalAddress;
      else if (isWildcardAddress(host)) log.warn({ listen: listenAt }, 'cluster.internalListen is a wildcard address: set cluster.internalAddress so that other nodes can dial this one');
      else internalAddress = `${host.includes(':') ? `[${host}]` : host}:${bound.port}`;
      log.info({ listen: `${host}:${bound.port}`, internalAddress }, 'relay endpoint listening');
    },
    registration: () => ({ internalAddress, relayKey: formatPublicKey(key.publicKey, `certunnel-relay ${o.nodeId}`) }),
    async close() {
      clearInterval(refresh);
      unsubscribe();
      client.close();
      await server?.close();
    },
  };
}
