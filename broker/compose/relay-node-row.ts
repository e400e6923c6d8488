/**
 * This node's row in the registry (the store's nodes table) with what the
 * node-to-node link needs: its internal address and relay key, a heartbeat
 * every cluster.heartbeatSeconds (other nodes treat a node whose heartbeat is
 * older than cluster.downAfterSeconds as down), and stopped_at when it stops.
 *
 * Merge note: node registration proper (heartbeat, down detection, the
 * node list) is cluster-nodes.ts's; when it is in, it writes
 * ClusterRelay.registration() into the row it registers and this file goes.
 */
import type { Logger } from '../telemetry/logger.js';
import type { Store } from '../store/types.js';

export interface RelayNodeRowOptions {
  readonly store: Store;
  readonly logger: Logger;
  readonly clock: () => Date;
  readonly node: { readonly id: string; readonly name: string };
  readonly sshEndpoint: string;
  readonly apiUrl: string | null;
  readonly heartbeatSeconds: number;
  registration(): { internalAddress: string | null; relayKey: string };
}

/** Registers the node now and heart-beats it; the returned function stops that and marks the node stopped. */
export async function keepRelayNodeRow(o: RelayNodeRowOptions): Promise<() => Promise<void>> {
  const register = async (): Promise<void> => {
    const { internalAddress, relayKey } = o.registration();
    await o.store.registerNode({
      id: o.node.id, name: o.node.name, sshEndpoint: o.sshEndpoint, apiUrl: o.apiUrl, internalAddress, relayKey, version: 'certunnel', startedAt: o.clock(),
    });
  };
  await register();
  const timer = setInterval(() => {
    o.store
      .heartbeatNode(o.node.id, o.clock())
      .then((known) => (known ? undefined : register()))
      .catch((err: unknown) => o.logger.warn({ err: (err as Error).message }, 'node heartbeat failed; retrying'));
  }, o.heartbeatSeconds * 1000);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await o.store.markNodeStopped(o.node.id, o.clock()).catch((err: unknown) => o.logger.warn({ err: (err as Error).message }, 'could not mark the node stopped'));
  };
}
