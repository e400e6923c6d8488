/**
 * The koa application: error rendering, body limits, authentication, and the
 * routes. Handlers are a few lines each: parse, authorize, call the core,
 * render. Only this folder imports koa.
 */
import { bodyParser } from '@koa/bodyparser';
import Router from '@koa/router';
import Koa from 'koa';
import { trustsProxy } from '../core/config.js';
import { BrokerError, type ErrorCode } from '../core/errors.js';
import { clientAddressFrom } from '../core/net-address.js';
import type { Logger } from '../telemetry/logger.js';
import { clientAddress, errorResponse, type AppState, type HttpDeps } from './context.js';
import { limitFailures } from './failure-limit.js';
import { registerAccessRoutes } from './routes-access.js';
import { registerDeviceRoutes } from './routes-device.js';
import { registerNodeRoutes } from './routes-nodes.js';
import { registerRotationRoutes } from './routes-rotation.js';
import { registerOperatorRoutes } from './routes-operator.js';
import { consolePages, registerConsoleRoutes } from './routes-console.js';
import { registerFleetRoutes } from './routes-fleet.js';

/** 5xx answers about a device (offline since …), not about the broker: their messages are written for the caller. */
const DEVICE_5XX: ReadonlySet<ErrorCode> = new Set(['DEVICE_OFFLINE', 'DEVICE_SERVICE_UNAVAILABLE']);

/** zlib's codes for bytes that are not what their Content-Encoding says (inflate passes them through as they are). */
const ZLIB_DATA_ERRORS: ReadonlySet<string> = new Set(['Z_DATA_ERROR', 'Z_BUF_ERROR', 'Z_NEED_DICT']);

/** koa-bodyparser (co-body / raw-body) errors carry a type and a status; a body that does not decode carries zlib's code. */
function bodyError(err: unknown): BrokerError | undefined {
  const e = err as { type?: string; status?: number; code?: string };
  if (e.code !== undefined && ZLIB_DATA_ERRORS.has(e.code)) return new BrokerError('BAD_REQUEST', 'request body does not match its Content-Encoding');
  if (e.type === 'entity.too.large' || e.status === 413) return new BrokerError('BODY_TOO_LARGE', 'request body is too large');
  if (e.type === 'entity.parse.failed' || e.type === 'entity.verify.failed') return new BrokerError('BAD_REQUEST', 'request body is not valid JSON');
  if (e.type === 'encoding.unsupported' || e.type === 'charset.unsupported') return new BrokerError('UNSUPPORTED_MEDIA_TYPE', 'unsupported body encoding');
  if (e.status === 400) return new BrokerError('BAD_REQUEST', 'malformed request');
  return undefined;
}

/** The one error renderer: a BrokerError's code and status, its message unless it is a 5xx about the broker (then logged). */
function renderError(ctx: Koa.Context, caught: unknown, logger: Logger): void {
  const err = caught instanceof BrokerError ? caught : (bodyError(caught) ?? caught);
  if (err instanceof BrokerError) {
    const hidden = err.status >= 500 && !DEVICE_5XX.has(err.code);
    ctx.status = err.status;
    ctx.body = errorResponse(err.code, hidden ? 'internal error' : err.message);
    if (hidden) logger.error({ err, path: ctx.path }, 'request failed');
  } else {
    logger.error({ err, path: ctx.path }, 'request failed');
    ctx.status = 500;
    ctx.body = errorResponse('INTERNAL', 'internal error');
  }
}

export function createApp(deps: HttpDeps): Koa<AppState> {
  const app = new Koa<AppState>();
  const router = new Router<AppState>();
  const trustForwardedFor = trustsProxy(deps.core.config.api);

  app.use(async (ctx, next) => {
    const started = process.hrtime.bigint();
    // Who is asking, once per request: audit rows and the log line below read it (clientAddress).
    ctx.state.client = clientAddressFrom(ctx.req.socket.remoteAddress, ctx.get('x-forwarded-for'), trustForwardedFor);
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) throw new BrokerError('NOT_FOUND', 'no such route');
    } catch (caught) {
      renderError(ctx, caught, deps.logger);
    } finally {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const route = (ctx as unknown as { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
      deps.metrics.httpDuration.observe({ route, status: String(ctx.status) }, seconds);
      deps.logger.debug({ method: ctx.method, route, status: ctx.status, ms: Math.round(seconds * 1e4) / 10, remote: clientAddress(ctx) }, 'http');
    }
  });

  app.use(limitFailures(deps));
  // Single sign-on's two GET routes (broker/oidc/), then the console's pages, before the JSON-only rule: its sign-in form posts urlencoded.
  const oidc = deps.oidc;
  if (oidc) app.use((ctx, next) => oidc.middleware(ctx, next));
  if (deps.console) app.use(consolePages(deps, deps.console));
  app.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.request.length && !ctx.is('application/json')) {
      throw new BrokerError('UNSUPPORTED_MEDIA_TYPE', 'request bodies must be application/json');
    }
    await next();
  });
  app.use(
    bodyParser({
      enableTypes: ['json'],
      jsonLimit: deps.core.config.api.bodyLimitBytes,
      jsonStrict: true,
      onError: (err) => {
        throw bodyError(err) ?? err;
      },
    }),
  );

  registerDeviceRoutes(router, deps);
  registerOperatorRoutes(router, deps);
  registerNodeRoutes(router, deps);
  registerRotationRoutes(router, deps);
  registerFleetRoutes(router, deps);
  if (deps.console) registerConsoleRoutes(router, deps, deps.console);
  if (deps.access) registerAccessRoutes(router, deps, deps.access);
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}
