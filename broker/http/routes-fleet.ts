/**
 * Routes the console added to the API (api/console.ts), with the roles of
 * their neighbours in routes-operator.ts: device labels and certificate
 * history (admin, operator), token batches (admin, provisioner), the
 * broker's status (admin, operator).
 */
import type Router from '@koa/router';
import { fingerprint } from '../../ca/index.js';
import type { BrokerStatusResponse, ListCertificatesResponse, ListTokenBatchesResponse, SetDeviceLabelsRequest } from '../../api/index.js';
import { requireRole } from '../core/api-keys.js';
import { setDeviceLabels } from '../core/device-labels.js';
import { findDeviceByRef } from '../core/revoke.js';
import { authenticate, type AppState, type HttpDeps } from './context.js';
import { viewDevices } from './routes-operator.js';
import { parseWith, setLabelsSchema } from './schemas.js';

const CERTIFICATE_HISTORY = 50;
const BATCHES = 200;

function brokerStatus(deps: HttpDeps): Omit<BrokerStatusResponse, 'devices' | 'trust' | 'rotation'> {
  const snapshot = deps.core.trustRoots.current();
  const problems = [...(deps.revocations.health().written ? [] : ['KRL_WRITE_FAILING']), ...(deps.problems?.() ?? [])];
  return {
    health: { status: problems.length === 0 ? 'ok' : 'degraded', problems },
    fingerprints: { userCa: fingerprint(snapshot.acceptedUserCas[0]!), hostCa: fingerprint(snapshot.hostCa), hostKey: fingerprint(snapshot.hostKey.publicKey) },
    apiPin: snapshot.tls?.pin ?? null,
    krlVersion: (deps.console?.krlVersion() ?? 0n).toString(),
    tunnelsOnline: [...(deps.console?.tunnelSamples() ?? [])],
    startedAt: (deps.console?.startedAt ?? deps.core.clock()).toISOString(),
  };
}

export function registerFleetRoutes(router: Router<AppState>, deps: HttpDeps): void {
  const core = deps.core;
  router.put('/v1/devices/:ref/labels', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'operator']);
    const { labels }: SetDeviceLabelsRequest = parseWith(setLabelsSchema, ctx.request.body);
    const id = await setDeviceLabels(core, ctx.params.ref!, labels, actor);
    deps.console?.events.devicesChanged(id);
    ctx.body = (await viewDevices(deps, [(await core.store.findDevice(id))!]))[0]!;
  });

  router.get('/v1/devices/:ref/certificates', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    const device = await findDeviceByRef(core, ctx.params.ref!);
    const certs = await core.store.listCertificatesOfDevice(device.id, CERTIFICATE_HISTORY);
    ctx.body = {
      items: certs.map((c) => ({
        serial: c.serial.toString(), keyId: c.keyId, principal: c.principal, fingerprint: c.keyFingerprint,
        validAfter: c.validAfter.toISOString(), validBefore: c.validBefore.toISOString(), issuedAt: c.issuedAt.toISOString(), revokedAt: c.revokedAt?.toISOString() ?? null,
      })),
    } satisfies ListCertificatesResponse;
  });

  router.get('/v1/tokens/batches', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'provisioner']);
    const batches = await core.store.listTokenBatches(core.clock(), BATCHES);
    ctx.body = {
      items: batches.map((b) => ({
        batch: b.batch, total: b.total, used: b.used, active: b.active, expired: b.expired, revoked: b.revoked,
        firstCreatedAt: b.firstCreatedAt.toISOString(), lastCreatedAt: b.lastCreatedAt.toISOString(), lastExpiresAt: b.lastExpiresAt.toISOString(),
      })),
    } satisfies ListTokenBatchesResponse;
  });

  router.get('/v1/broker', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'operator']);
    ctx.set('cache-control', 'no-store');
    // trust and rotation (0.5) come after the fields clients have always seen; rotations are the admins' (routes-rotation.ts).
    const { trust, rotation } = core.trustRoots.current();
    ctx.body = {
      ...brokerStatus(deps), devices: await core.store.countDevicesByStatus(), trust,
      ...(actor.role === 'admin' ? { rotation: rotation ? { id: rotation.id, root: rotation.root, phase: rotation.phase } : null } : {}),
    } satisfies BrokerStatusResponse;
  });
}
