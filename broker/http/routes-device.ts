/**
 * Routes devices and anyone may call: enrollment, renewal, public CA keys,
 * the KRL, health, metrics. Their wire types are api/device.ts.
 */
import type Router from '@koa/router';
import type { CaResponse, EnrollRequest, EnrollResponse, HealthResponse, RenewRequest, RenewResponse } from '../../api/index.js';
import { formatPublicKey } from '../../ca/index.js';
import { enrollDevice } from '../core/enroll.js';
import { renewDevice } from '../core/renew.js';
import { sshGrantFields } from '../core/ssh-endpoints.js';
import { BrokerError } from '../core/errors.js';
import { clientAddress, type AppState, type HttpDeps } from './context.js';
import { enrollSchema, parseWith, renewSchema } from './schemas.js';

function outcomeOf(err: unknown): string {
  return err instanceof BrokerError ? err.code : 'INTERNAL';
}

export function registerDeviceRoutes(router: Router<AppState>, deps: HttpDeps): void {
  router.get('/healthz', (ctx) => {
    const problems = [...(deps.revocations.health().written ? [] : ['KRL_WRITE_FAILING']), ...(deps.problems?.() ?? [])];
    ctx.body = (problems.length === 0 ? { status: 'ok' } : { status: 'degraded', problems }) satisfies HealthResponse;
  });

  router.get('/metrics', async (ctx) => {
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await deps.metrics.registry.metrics();
  });

  // The host key, host CA and pin are the presented ones (what a pre-0.5 device pins); `trust` adds a rotation's next.
  router.get('/v1/ca', (ctx) => {
    const grant = sshGrantFields(deps.core);
    ctx.body = {
      // The user CA in force: the current one until a user-ca rotation commits (both are accepted during it).
      userCertificateAuthority: formatPublicKey(deps.core.trustRoots.current().acceptedUserCas[0]!),
      hostCertificateAuthority: grant.ssh.hostCertificateAuthority,
      hostKey: grant.ssh.hostKey,
      apiPin: deps.core.trustRoots.current().tls?.pin ?? null,
      ...grant,
    } satisfies CaResponse;
  });

  router.get('/v1/krl', (ctx) => {
    ctx.type = 'application/octet-stream';
    ctx.body = deps.revocations.krl;
  });

  router.post('/v1/enroll', async (ctx) => {
    try {
      const req: EnrollRequest = parseWith(enrollSchema, ctx.request.body);
      ctx.body = (await enrollDevice(deps.core, req, { remoteAddr: clientAddress(ctx) })) satisfies EnrollResponse;
      ctx.status = 201;
      deps.metrics.enrollments.inc({ outcome: 'ok' });
    } catch (err) {
      deps.metrics.enrollments.inc({ outcome: outcomeOf(err) });
      throw err;
    }
  });

  router.post('/v1/renew', async (ctx) => {
    try {
      const req: RenewRequest = parseWith(renewSchema, ctx.request.body);
      ctx.body = (await renewDevice(deps.core, req, { remoteAddr: clientAddress(ctx) })) satisfies RenewResponse;
      deps.metrics.renewals.inc({ outcome: 'ok' });
    } catch (err) {
      deps.metrics.renewals.inc({ outcome: outcomeOf(err) });
      throw err;
    }
  });
}
