/**
 * Rotations of the trust roots (admin keys only; docs/rotation.md, wire
 * types api/rotation.ts): POST /v1/rotations {root} starts one,
 * GET /v1/rotations/current says how far it is, POST
 * /v1/rotations/current/commit {force?} and …/rollback end it. The rules
 * are core/rotation.ts's.
 */
import type Router from '@koa/router';
import type { RotationResponse, RotationStatusResponse, RotationView } from '../../api/index.js';
import { requireRole } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { commitRotation, rollbackRotation, rotationStatus, startRotation, type RotationDeps } from '../core/rotation.js';
import type { TrustRotationRecord } from '../store/types.js';
import { authenticate, type AppState, type HttpDeps } from './context.js';
import { commitRotationSchema, parseWith, startRotationSchema } from './schemas.js';

export function viewRotation(r: TrustRotationRecord): RotationView {
  return {
    id: r.id, root: r.root, phase: r.phase, from: r.fromFingerprint, next: r.nextFingerprint, startedAt: r.startedAt.toISOString(), startedBy: r.startedBy,
    learnAt: r.learnAt?.toISOString() ?? null, finishedAt: r.finishedAt?.toISOString() ?? null, finishedBy: r.finishedBy, outcome: r.outcome,
  };
}

function rotationDeps(deps: HttpDeps): RotationDeps {
  const { store, config, clock, trustRoots, rotation } = deps.core;
  if (!rotation) throw new BrokerError('ROTATION_UNSUPPORTED', 'this broker runs with fixed trust roots; rotations are not available');
  return { store, config, clock, trustRoots, rotation };
}

export function registerRotationRoutes(router: Router<AppState>, deps: HttpDeps): void {
  router.post('/v1/rotations', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    const { root } = parseWith(startRotationSchema, ctx.request.body);
    ctx.body = { rotation: viewRotation(await startRotation(rotationDeps(deps), root, actor)) } satisfies RotationResponse;
    ctx.status = 201;
  });

  router.get('/v1/rotations/current', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin']);
    const s = await rotationStatus(rotationDeps(deps));
    ctx.body = {
      rotation: viewRotation(s.rotation),
      nodes: { acked: s.nodes.acked, up: s.nodes.up, lagging: [...s.nodes.lagging] },
      devices: {
        active: s.devices.active, learned: s.devices.learned, laggingNotListed: s.devices.laggingNotListed,
        lagging: s.devices.lagging.map((d) => ({ id: d.id, name: d.name, lastSeenAt: d.lastSeenAt?.toISOString() ?? null })),
      },
    } satisfies RotationStatusResponse;
  });

  router.post('/v1/rotations/current/commit', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    const { force } = parseWith(commitRotationSchema, ctx.request.body ?? {});
    ctx.body = { rotation: viewRotation(await commitRotation(rotationDeps(deps), { force }, actor)) } satisfies RotationResponse;
  });

  router.post('/v1/rotations/current/rollback', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin']);
    ctx.body = { rotation: viewRotation(await rollbackRotation(rotationDeps(deps), actor)) } satisfies RotationResponse;
  });
}
