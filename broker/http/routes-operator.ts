/**
 * Routes for API-key holders: tokens (admin, provisioner), devices and audit
 * (admin, operator), API keys (admin). Their wire types are api/operator.ts;
 * the views below render store records in them (an API key's view is core's
 * viewApiKey: the local CLI lists keys in it too).
 */
import type Router from '@koa/router';
import type { AuditEventView, CreateApiKeyRequest, CreateApiKeyResponse, DeviceView, ListApiKeysResponse, ListAuditRequest, ListAuditResponse, ListDevicesRequest, ListDevicesResponse, ListTokensRequest, MintTokensRequest, RevokeApiKeyRequest, RevokeApiKeyResponse, RevokeDeviceRequest, RevokeDeviceResponse, RevokeTokensRequest } from '../../api/index.js';
import { apiKeyActorNames, createApiKey, requireRole, revokeApiKey, viewApiKey } from '../core/api-keys.js';
import { findDeviceByRef, revokeDevice } from '../core/revoke.js';
import { listTokens, mintTokens, revokeTokens } from '../core/tokens.js';
import type { AuditEvent, CertificateRecord, DeviceRecord } from '../store/types.js';
import { authenticate, type AppState, type HttpDeps } from './context.js';
import {
  createApiKeySchema, listAuditQuery, listDevicesQuery, listTokensQuery, mintTokensSchema, parseWith, revokeApiKeySchema, revokeDeviceSchema, revokeTokensSchema,
} from './schemas.js';

const iso = (d: Date | null): string | null => d?.toISOString() ?? null;

/** NAMES: API key names by actor (apiKeyActorNames), for revokedByName. */
function viewDevice(d: DeviceRecord, names: ReadonlyMap<string, string>, cert: CertificateRecord | undefined): DeviceView {
  const revokedByName = d.revokedBy === null ? undefined : names.get(d.revokedBy);
  const certificate = cert && { serial: cert.serial.toString(), validBefore: cert.validBefore.toISOString(), revoked: cert.revokedAt !== null };
  return {
    id: d.id, name: d.name, hardwareSerial: d.hardwareSerial, status: d.status,
    ports: d.portFirst === null || d.portLast === null ? null : { first: d.portFirst, last: d.portLast },
    publicKey: d.publicKey, fingerprint: d.keyFingerprint, labels: d.labels,
    online: d.online, connectedSince: iso(d.connectedSince), remoteAddr: d.remoteAddr, lastSeenAt: iso(d.lastSeenAt),
    createdAt: d.createdAt.toISOString(), revokedAt: iso(d.revokedAt), revokedBy: d.revokedBy, revokeReason: d.revokeReason,
    // Fields added after v0.2.0 come last: clients may rely on the order of the older ones (test/api/wire.test.ts).
    ...(revokedByName === undefined ? {} : { revokedByName }),
    ...(certificate === undefined ? {} : { certificate }),
    ...(d.online && d.nodeId !== null ? { node: d.nodeId } : {}),
  };
}

/** DEVICES as the API shows them: with the names of the keys that revoked them and their latest certificates (one query per page). */
export async function viewDevices(deps: HttpDeps, devices: readonly DeviceRecord[]): Promise<DeviceView[]> {
  const names = await apiKeyActorNames(deps.core.store, devices.map((d) => d.revokedBy));
  const certs = await deps.core.store.latestCertificatesOfDevices(devices.map((d) => d.id));
  return devices.map((d) => viewDevice(d, names, certs.get(d.id)));
}

function viewAudit(e: AuditEvent, names: ReadonlyMap<string, string>): AuditEventView {
  const actorName = names.get(e.actor);
  return {
    id: e.id, at: e.at.toISOString(), actor: e.actor, action: e.action, target: e.target, remoteAddr: e.remoteAddr, outcome: e.outcome, details: e.details,
    ...(actorName === undefined ? {} : { actorName }),
  };
}

function registerTokenRoutes(router: Router<AppState>, deps: HttpDeps): void {
  router.post('/v1/tokens', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'provisioner']);
    const req: MintTokensRequest & { count: number } = parseWith(mintTokensSchema, ctx.request.body);
    ctx.body = await mintTokens(deps.core, req, actor);
    ctx.status = 201;
  });

  router.get('/v1/tokens', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'provisioner']);
    const q: ListTokensRequest = parseWith(listTokensQuery, ctx.query);
    ctx.body = await listTokens(deps.core, q);
  });

  router.post('/v1/tokens/revoke', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'provisioner']);
    const req: RevokeTokensRequest = parseWith(revokeTokensSchema, ctx.request.body);
    ctx.body = await revokeTokens(deps.core, req, actor);
  });
}

function registerDeviceAndAuditRoutes(router: Router<AppState>, deps: HttpDeps): void {
  const core = deps.core;
  router.get('/v1/devices', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const q: ListDevicesRequest = parseWith(listDevicesQuery, ctx.query);
    const [key, ...value] = q.label?.split('=') ?? [];
    const page = await core.store.listDevices({
      status: q.status, nameContains: q.name, label: key === undefined ? undefined : { key, value: value.join('=') }, limit: q.limit, cursor: q.cursor,
      online: q.online === undefined ? undefined : q.online === 'true', sort: q.sort,
    });
    ctx.body = { items: await viewDevices(deps, page.items), nextCursor: page.nextCursor } satisfies ListDevicesResponse;
  });

  router.get('/v1/devices/:ref', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    ctx.body = (await viewDevices(deps, [await findDeviceByRef(core, ctx.params.ref!)]))[0]!;
  });

  router.post('/v1/devices/:ref/revoke', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'operator']);
    const { reason }: RevokeDeviceRequest = parseWith(revokeDeviceSchema, ctx.request.body);
    const result = await revokeDevice(core, ctx.params.ref!, reason ?? null, actor);
    if (!result.alreadyRevoked) deps.metrics.revocations.inc();
    ctx.body = { device: (await viewDevices(deps, [result.device]))[0]!, alreadyRevoked: result.alreadyRevoked, certificatesRevoked: result.certificatesRevoked } satisfies RevokeDeviceResponse;
  });

  router.get('/v1/audit', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const q: ListAuditRequest = parseWith(listAuditQuery, ctx.query);
    const page = await core.store.listAudit({
      since: q.since ? new Date(q.since) : undefined, until: q.until ? new Date(q.until) : undefined, action: q.action, actor: q.actor, target: q.target, limit: q.limit, cursor: q.cursor,
    });
    const names = await apiKeyActorNames(core.store, page.items.map((e) => e.actor));
    ctx.body = { items: page.items.map((e) => viewAudit(e, names)), nextCursor: page.nextCursor } satisfies ListAuditResponse;
  });
}

function registerApiKeyRoutes(router: Router<AppState>, deps: HttpDeps): void {
  const core = deps.core;
  router.post('/v1/apikeys', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    const req: CreateApiKeyRequest = parseWith(createApiKeySchema, ctx.request.body);
    const expiresAt = req.expiresAt === undefined ? null : new Date(req.expiresAt);
    ctx.body = (await createApiKey(core.store, { role: req.role, name: req.name, expiresAt }, actor, core.clock())) satisfies CreateApiKeyResponse;
    ctx.status = 201;
  });

  router.get('/v1/apikeys', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin']);
    const keys = await core.store.listApiKeys();
    const now = core.clock();
    ctx.body = { items: keys.map((k) => viewApiKey(k, now)) } satisfies ListApiKeysResponse;
  });

  router.post('/v1/apikeys/:id/revoke', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    const req: RevokeApiKeyRequest = parseWith(revokeApiKeySchema, ctx.request.body);
    const result = await revokeApiKey(core, ctx.params.id!, { force: req.force }, actor);
    // The proxy caches keys for a few seconds: the revoked one must fail on its next request.
    deps.access?.authorizer.forgetApiKey(result.record.id);
    ctx.body = { key: viewApiKey(result.record, core.clock()), alreadyRevoked: result.alreadyRevoked } satisfies RevokeApiKeyResponse;
  });
}

export function registerOperatorRoutes(router: Router<AppState>, deps: HttpDeps): void {
  registerTokenRoutes(router, deps);
  registerDeviceAndAuditRoutes(router, deps);
  registerApiKeyRoutes(router, deps);
}
