/** Routes for API-key holders: tokens (admin, provisioner), devices and audit (admin, operator), API keys (admin). */
import type Router from '@koa/router';
import { createApiKey, requireRole } from '../core/api-keys.js';
import { findDeviceByRef, revokeDevice } from '../core/revoke.js';
import { listTokens, mintTokens, revokeTokens } from '../core/tokens.js';
import type { AuditEvent, DeviceRecord } from '../store/types.js';
import { authenticate, type AppState, type HttpDeps } from './context.js';
import {
  createApiKeySchema, listAuditQuery, listDevicesQuery, listTokensQuery, mintTokensSchema, parseWith, revokeDeviceSchema, revokeTokensSchema,
} from './schemas.js';

const iso = (d: Date | null): string | null => d?.toISOString() ?? null;

export function viewDevice(d: DeviceRecord): Record<string, unknown> {
  return {
    id: d.id, name: d.name, hardwareSerial: d.hardwareSerial, status: d.status,
    ports: d.portFirst === null ? null : { first: d.portFirst, last: d.portLast },
    publicKey: d.publicKey, fingerprint: d.keyFingerprint, labels: d.labels,
    online: d.online, connectedSince: iso(d.connectedSince), remoteAddr: d.remoteAddr, lastSeenAt: iso(d.lastSeenAt),
    createdAt: iso(d.createdAt), revokedAt: iso(d.revokedAt), revokedBy: d.revokedBy, revokeReason: d.revokeReason,
  };
}

function viewAudit(e: AuditEvent): Record<string, unknown> {
  return { id: e.id, at: e.at.toISOString(), actor: e.actor, action: e.action, target: e.target, remoteAddr: e.remoteAddr, outcome: e.outcome, details: e.details };
}

export function registerOperatorRoutes(router: Router<AppState>, deps: HttpDeps): void {
  const core = deps.core;

  router.post('/v1/tokens', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'provisioner']);
    ctx.body = await mintTokens(core, parseWith(mintTokensSchema, ctx.request.body), actor);
    ctx.status = 201;
  });

  router.get('/v1/tokens', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'provisioner']);
    ctx.body = await listTokens(core, parseWith(listTokensQuery, ctx.query));
  });

  router.post('/v1/tokens/revoke', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'provisioner']);
    ctx.body = await revokeTokens(core, parseWith(revokeTokensSchema, ctx.request.body), actor);
  });

  router.get('/v1/devices', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const q = parseWith(listDevicesQuery, ctx.query);
    const [key, ...value] = q.label?.split('=') ?? [];
    const page = await core.store.listDevices({
      status: q.status, nameContains: q.name, label: key === undefined ? undefined : { key, value: value.join('=') }, limit: q.limit, cursor: q.cursor,
    });
    ctx.body = { items: page.items.map(viewDevice), nextCursor: page.nextCursor };
  });

  router.get('/v1/devices/:ref', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    ctx.body = viewDevice(await findDeviceByRef(core, ctx.params.ref!));
  });

  router.post('/v1/devices/:ref/revoke', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'operator']);
    const { reason } = parseWith(revokeDeviceSchema, ctx.request.body);
    const result = await revokeDevice(core, ctx.params.ref!, reason ?? null, actor);
    if (!result.alreadyRevoked) deps.metrics.revocations.inc();
    ctx.body = { device: viewDevice(result.device), alreadyRevoked: result.alreadyRevoked, certificatesRevoked: result.certificatesRevoked };
  });

  router.get('/v1/audit', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const q = parseWith(listAuditQuery, ctx.query);
    const page = await core.store.listAudit({ since: q.since ? new Date(q.since) : undefined, action: q.action, actor: q.actor, limit: q.limit, cursor: q.cursor });
    ctx.body = { items: page.items.map(viewAudit), nextCursor: page.nextCursor };
  });

  router.post('/v1/apikeys', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    ctx.body = await createApiKey(core.store, parseWith(createApiKeySchema, ctx.request.body), actor, core.clock());
    ctx.status = 201;
  });

  router.get('/v1/apikeys', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin']);
    const keys = await core.store.listApiKeys();
    ctx.body = { items: keys.map((k) => ({ id: k.id, name: k.name, role: k.role, createdAt: iso(k.createdAt), createdBy: k.createdBy, revokedAt: iso(k.revokedAt), lastUsedAt: iso(k.lastUsedAt) })) };
  });
}
