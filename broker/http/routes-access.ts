/**
 * Operator access over the API: operator certificates for `certunnel ssh`,
 * and the auth_request endpoint an nginx in front of the broker asks before
 * relaying a device hostname itself (`certunnel proxy nginx-config`).
 */
import type Router from '@koa/router';
import { z } from 'zod';
import type { AccessLayer } from '../proxy/index.js';
import { issueOperatorCertificate } from '../core/operator-certificate.js';
import { hostOf } from '../proxy/hostname.js';
import { crossOriginRefusal, requestOrigin } from '../proxy/origin.js';
import { AUTHORIZE_HEADERS } from '../../api/index.js';
import { requireRole } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { trustsProxy } from '../core/config.js';
import { clientAddressFrom, isLoopbackAddress } from '../core/net-address.js';
import { authenticate, errorResponse, type AppState, type HttpDeps } from './context.js';
import { parseWith } from './schemas.js';

const operatorCertificateSchema = z.strictObject({ publicKey: z.string().min(1).max(8192) });

export function registerAccessRoutes(router: Router<AppState>, deps: HttpDeps, access: AccessLayer): void {
  router.post('/v1/devices/:ref/operator-certificate', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    requireRole(actor, ['admin', 'operator']);
    const req = parseWith(operatorCertificateSchema, ctx.request.body);
    ctx.body = await issueOperatorCertificate({ core: deps.core, presence: access.presence }, ctx.params.ref!, req, actor);
    ctx.status = 201;
  });

  /**
   * nginx auth_request: 2xx lets nginx relay (to the port in
   * X-Certunnel-Upstream-Port, with the credential-free Cookie and
   * Authorization it is given); nginx understands only 401 and 403 besides,
   * so every other refusal is a 403 whose code is in X-Certunnel-Error, and
   * nginx fetches the page that explains it from the broker.
   */
  router.get('/v1/proxy/authorize', async (ctx) => {
    if (!deps.core.config.proxy.enabled) throw new BrokerError('NOT_FOUND', 'the HTTP proxy is disabled (config proxy.enabled)');
    const forwardedHost = ctx.get('x-forwarded-host').split(',')[0]!.trim();
    const deviceName = access.matchDevice(forwardedHost);
    if (deviceName === undefined) throw new BrokerError('BAD_REQUEST', 'X-Forwarded-Host must be <device-name>.<domain>');
    // nginx's subrequest is a GET; the configuration names the request's method and the origin it addressed.
    const method = ctx.get('x-original-method');
    if (method) {
      const own = requestOrigin(ctx.get('x-forwarded-proto') === 'http' ? 'http' : 'https', ctx.get('x-original-host') || forwardedHost);
      const refusal = crossOriginRefusal({ method, headers: ctx.req.headers, own, upgrade: ctx.get('upgrade') !== '' });
      if (refusal) {
        ctx.status = 403;
        ctx.set(AUTHORIZE_HEADERS.error, 'CROSS_ORIGIN_REFUSED');
        ctx.body = errorResponse('CROSS_ORIGIN_REFUSED', refusal);
        return;
      }
    }
    const decision = await access.authorizer.decide({
      deviceName, host: hostOf(forwardedHost)!, authorization: ctx.get('authorization') || undefined, cookie: ctx.get('cookie') || undefined,
      // nginx on this host (or the proxy trusted by api.trustProxy) puts the client last in X-Forwarded-For.
      remoteAddr: clientAddressFrom(ctx.req.socket.remoteAddress, ctx.get('x-forwarded-for'), trustsProxy(deps.core.config.api) || isLoopbackAddress(ctx.req.socket.remoteAddress)),
    });
    ctx.set('cache-control', 'no-store');
    if (!decision.allow) {
      ctx.status = decision.code === 'UNAUTHENTICATED' ? 401 : 403;
      if (decision.retryAfterSeconds) ctx.set('retry-after', String(decision.retryAfterSeconds));
      ctx.set(AUTHORIZE_HEADERS.error, decision.code);
      ctx.body = errorResponse(decision.code, decision.message);
      return;
    }
    ctx.set(AUTHORIZE_HEADERS.upstreamPort, String(decision.port));
    ctx.set(AUTHORIZE_HEADERS.deviceId, decision.device.id);
    ctx.set(AUTHORIZE_HEADERS.cookie, decision.forward.cookie ?? '');
    ctx.set(AUTHORIZE_HEADERS.authorization, decision.forward.authorization ?? '');
    ctx.status = 204;
  });
}
