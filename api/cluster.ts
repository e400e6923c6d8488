/**
 * Wire types of the cluster routes (broker/http/routes-nodes.ts): the
 * broker nodes sharing one PostgreSQL database (docs/cluster.md). A single
 * broker on SQLite lists itself, alone.
 */

/**
 * Derived, not stored: `stopped` (it stopped cleanly), `down` (its heartbeat
 * is older than cluster.downAfterSeconds: it died or lost the database),
 * else `up`.
 */
export const NODE_STATUSES = ['up', 'down', 'stopped'] as const;
export type NodeStatus = (typeof NODE_STATUSES)[number];


export interface NodeView {
  /** `node_…`, from the node's data directory (node.json). */
  id: string;
  name: string;
  /** host:port devices dial (ssh.publicHost/publicPort, else what it bound). */
  sshEndpoint: string;
  apiUrl: string | null;
  /** host:port other nodes reach it on (node-to-node link); null: none. */
  internalAddress: string | null;
  version: string;
  startedAt: string;
  heartbeatAt: string;
  status: NodeStatus;
  /** Devices whose tunnel this node holds now. */
  devicesOnline: number;
}

/** GET /v1/nodes (admin, operator): every node, oldest start first, in one page. */
export interface ListNodesResponse {
  items: NodeView[];
}
