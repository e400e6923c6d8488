/**
 * This broker as a node of a cluster (several brokers on one PostgreSQL
 * database; a single broker on SQLite is a cluster of one, harmlessly):
 *
 * - before its SSH side starts, it takes its identity (node.json) and
 *   clears the presence rows that still name it (it holds no tunnel yet;
 *   a crash left them);
 * - once its listeners are up, it registers (id, name, the SSH endpoint
 *   devices dial, API URL, internal address and relay key when the
 *   node-to-node link gives them) and writes a heartbeat every
 *   cluster.heartbeatSeconds;
 * - on every heartbeat it looks for nodes whose heartbeat is older than
 *   cluster.downAfterSeconds: the first node to see one marks it down (a
 *   compare-and-swap, so once per down transition across the cluster), and
 *   in the same transaction clears its presence and writes `node.down` to
 *   the audit trail;
 * - it keeps the SSH endpoints of the nodes that are up (itself first) for
 *   enrollment and renewal answers, refreshed with the heartbeat;
 * - stopping cleanly, it marks itself stopped.
 *
 * Times come from each node's clock: the nodes' clocks must agree to well
 * within downAfterSeconds (NTP; docs/cluster.md).
 */
import { readFile } from 'node:fs/promises';
import type { SshAddressWire } from '../../api/index.js';
import type { BrokerConfig } from '../core/config.js';
import { formatHostPort, staleBefore, upSshEndpoints } from '../core/node-status.js';
import type { Logger } from '../telemetry/logger.js';
import type { NodeRecord, Store } from '../store/types.js';
import type { DataPaths } from './data-dir.js';
import { loadNodeIdentity, type NodeIdentity } from './node-identity.js';

export interface ClusterNodeOptions {
  readonly store: Store;
  readonly config: BrokerConfig;
  readonly logger: Logger;
  readonly clock: () => Date;
  readonly paths: Pick<DataPaths, 'node'>;
  /** The software version this node registers with (default: package.json's). */
  readonly version?: string;
}

/** Where this node is reached, known once its listeners are up. */
export interface NodeEndpoints {
  /** What devices dial: ssh.publicHost/publicPort, else the address bound. */
  readonly sshEndpoint: SshAddressWire;
  readonly apiUrl: string | null;
  /** host:port other nodes dial for the node-to-node link (the relay work passes it); absent: none. */
  readonly internalAddress?: string | null;
  /** The relay's public key line other nodes pin; absent: none. */
  readonly relayKey?: string | null;
}

export interface ClusterNode {
  readonly identity: NodeIdentity;
  /** Registers this node and starts the heartbeat (its first beat runs before this resolves). */
  start(endpoints: NodeEndpoints): Promise<void>;
  /** One heartbeat: this node's beat, down detection, the endpoint cache; never rejects (a failure is logged). */
  beat(): Promise<void>;
  /** The SSH endpoints of the nodes up at the last heartbeat, this node first; empty before start(). */
  sshEndpoints(): readonly SshAddressWire[];
  /** Stops the heartbeat and marks this node stopped. */
  stop(): Promise<void>;
}

/** The package's version, beside the sources (broker/compose/) or the build (dist/broker/compose/). */
async function packageVersion(): Promise<string> {
  for (const rel of ['../../package.json', '../../../package.json']) {
    const pkg = await readFile(new URL(rel, import.meta.url), 'utf8').then((t) => JSON.parse(t) as { name?: string; version?: string }, () => undefined);
    if (pkg?.name === 'certunnel' && pkg.version) return pkg.version;
  }
  return 'unknown';
}

/**
 * Marks NODE down if nobody did yet, clears its presence and audits it, all
 * in one transaction: a node that dies half-way leaves it to the next one.
 * Returns the devices cleared, or null if another node (or a late heartbeat) won.
 */
async function markDown(o: ClusterNodeOptions, self: NodeIdentity, node: NodeRecord, now: Date): Promise<number | null> {
  return o.store.transaction(async (tx) => {
    if (!(await tx.markNodeDown(node.id, staleBefore(now, o.config.cluster.downAfterSeconds), now))) return null;
    const cleared = await tx.clearPresenceOfNode(node.id, node.heartbeatAt);
    await tx.appendAudit({
      at: now, actor: `node:${self.id}`, action: 'node.down', target: node.id, remoteAddr: null, outcome: 'ok',
      details: { name: node.name, sshEndpoint: node.sshEndpoint, lastHeartbeat: node.heartbeatAt.toISOString(), devicesCleared: cleared },
    });
    return cleared;
  });
}

/** Takes this node's identity and clears the presence it left behind (call before the SSH side accepts tunnels). */
export async function prepareClusterNode(o: ClusterNodeOptions): Promise<ClusterNode> {
  const log = o.logger.child({ component: 'cluster' });
  const identity = await loadNodeIdentity(o.paths);
  const stale = await o.store.clearPresenceOfNode(identity.id, o.clock());
  if (stale > 0) log.info({ devices: stale, node: identity.id }, 'cleared the presence this node held when it last stopped');
  const version = o.version ?? (await packageVersion());
  const { heartbeatSeconds, downAfterSeconds } = o.config.cluster;

  let endpoints: NodeEndpoints | undefined;
  let cache: readonly SshAddressWire[] = [];
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  const register = async (now: Date): Promise<void> => {
    const e = endpoints!;
    await o.store.registerNode({
      id: identity.id, name: identity.name, sshEndpoint: formatHostPort(e.sshEndpoint), apiUrl: e.apiUrl,
      internalAddress: e.internalAddress ?? null, relayKey: e.relayKey ?? null, version, startedAt: now,
    });
  };

  const beatOnce = async (): Promise<void> => {
    const now = o.clock();
    const before = await o.store.listNodes();
    if (before.find((n) => n.id === identity.id)?.downAt) {
      // Its heartbeat was late (a stall, the database away): another node cleared its presence; the tunnels it holds are still up.
      log.warn({ node: identity.id }, 'this node was marked down by another node (its heartbeat was late); its presence rows were cleared');
    }
    if (!(await o.store.heartbeatNode(identity.id, now))) await register(now);
    const stale = staleBefore(now, downAfterSeconds).getTime();
    for (const node of before) {
      if (node.id === identity.id || node.stoppedAt !== null || node.downAt !== null || node.heartbeatAt.getTime() >= stale) continue;
      const cleared = await markDown(o, identity, node, now);
      if (cleared !== null) log.warn({ node: node.id, name: node.name, lastHeartbeat: node.heartbeatAt, devicesCleared: cleared }, 'node down: its heartbeat stopped; its presence cleared');
    }
    cache = upSshEndpoints(await o.store.listNodes(), { id: identity.id, endpoint: endpoints!.sshEndpoint }, now, downAfterSeconds);
  };

  const beat = (): Promise<void> => {
    running ??= beatOnce()
      .catch((err: unknown) => log.warn({ err }, 'heartbeat failed; the next one retries'))
      .finally(() => {
        running = undefined;
      });
    return running;
  };

  return {
    identity,
    async start(given) {
      endpoints = given;
      cache = [given.sshEndpoint];
      await register(o.clock());
      await beat();
      timer = setInterval(() => void beat(), heartbeatSeconds * 1000);
      timer.unref();
      log.info({ node: identity.id, name: identity.name, sshEndpoint: formatHostPort(given.sshEndpoint) }, 'node registered');
    },
    beat,
    sshEndpoints: () => cache,
    async stop() {
      if (timer === undefined) return;
      clearInterval(timer);
      timer = undefined;
      await running;
      await o.store.markNodeStopped(identity.id, o.clock());
    },
  };
}
