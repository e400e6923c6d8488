/**
 * Failed requests per client address on the API: enrollments and renewals
 * that fail, unknown API keys (bearer, or typed into the console's sign-in form). A source gets api.failureBurst failures,
 * refilled at api.failuresPerMinute; once it has none left, its enrollments,
 * renewals, keyed requests and console sign-ins are answered RATE_LIMITED (429, Retry-After)
 * before any work or audit row. Successes never spend the allowance, so a
 * factory behind one NAT enrolls as fast as it likes.
 */
import type Koa from 'koa';
import { BrokerError } from '../core/errors.js';
import { ConnectionRateLimiter } from '../core/rate-limit.js';
import { CONSOLE_SIGN_IN_PATH } from './console-pages.js';
import { clientAddress, type AppState, type HttpDeps } from './context.js';

const DEVICE_ROUTES = new Set(['/v1/enroll', '/v1/renew']);

function isDeviceRoute(ctx: Koa.Context): boolean {
  return ctx.method === 'POST' && DEVICE_ROUTES.has(ctx.path);
}

/** Whether ERR, thrown for CTX, is a failure the client caused that this limit counts. */
function spends(ctx: Koa.Context, err: unknown): boolean {
  if (!(err instanceof BrokerError) || err.status < 400 || err.status >= 500 || err.code === 'RATE_LIMITED') return false;
  return isDeviceRoute(ctx) || err.code === 'UNAUTHENTICATED';
}

export function limitFailures(deps: Pick<HttpDeps, 'core' | 'logger'>): Koa.Middleware<AppState> {
  const { failureBurst, failuresPerMinute } = deps.core.config.api;
  const failures = new ConnectionRateLimiter({ ratePerSecond: failuresPerMinute / 60, burst: failureBurst });
  // One log line per source per minute at most, not one per refused request.
  const logs = new ConnectionRateLimiter({ ratePerSecond: 1 / 60, burst: 1 });
  return async (ctx, next) => {
    const source = clientAddress(ctx);
    const signIn = ctx.method === 'POST' && ctx.path === CONSOLE_SIGN_IN_PATH;
    if (!source || !(isDeviceRoute(ctx) || signIn || ctx.get('authorization'))) return next();
    const wait = failures.retryAfterSeconds(source);
    if (wait > 0) {
      if (logs.take(source).allowed) deps.logger.warn({ remoteAddr: source, path: ctx.path }, 'api requests refused: too many failures from this address');
      ctx.set('retry-after', String(wait));
      throw new BrokerError('RATE_LIMITED', `too many failed requests from your address; try again in ${wait} s`);
    }
    try {
      await next();
      if (ctx.state.signInFailed) failures.take(source);
    } catch (err) {
      if (spends(ctx, err)) failures.take(source);
      throw err;
    }
  };
}
