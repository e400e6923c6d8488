/**
 * GET /v1/nodes (admin, operator): the broker nodes sharing the store, with
 * their status as this node's clock sees them (core/node-status.ts) and the
 * devices whose tunnel each holds. Wire types: api/cluster.ts.
 */
import type Router from '@koa/router';
import type { ListNodesResponse, NodeView } from '../../api/index.js';
import { requireRole } from '../core/api-keys.js';
import { nodeStatus } from '../core/node-status.js';
import type { NodeRecord } from '../store/types.js';
import { authenticate, type AppState, type HttpDeps } from './context.js';

function viewNode(n: NodeRecord, now: Date, downAfterSeconds: number, devicesOnline: number): NodeView {
  return {
    id: n.id, name: n.name, sshEndpoint: n.sshEndpoint, apiUrl: n.apiUrl, internalAddress: n.internalAddress, version: n.version,
    startedAt: n.startedAt.toISOString(), heartbeatAt: n.heartbeatAt.toISOString(), status: nodeStatus(n, now, downAfterSeconds), devicesOnline,
  };
}

export function registerNodeRoutes(router: Router<AppState>, deps: HttpDeps): void {
  const { store, config, clock } = deps.core;
  router.get('/v1/nodes', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const [nodes, online] = await Promise.all([store.listNodes(), store.countOnlineDevicesByNode()]);
    const now = clock();
    ctx.body = { items: nodes.map((n) => viewNode(n, now, config.cluster.downAfterSeconds, online[n.id] ?? 0)) } satisfies ListNodesResponse;
  });
}
