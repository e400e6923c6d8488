/**
 * What every route handler shares: the dependencies handed to the koa
 * application, the request state, the API-key check (`Authorization:
 * Bearer …`) and the body of a refusal. The route files and app.ts import
 * this file; it imports neither, so the http room has no import loop.
 */
import type { RouterContext } from '@koa/router';
import type { OidcSignIn } from '../oidc/index.js';
import type Koa from 'koa';
import type { Logger } from '../telemetry/logger.js';
import type { BrokerMetrics } from '../telemetry/metrics.js';
import type { ErrorCode, ErrorResponse } from '../../api/index.js';
import type { Actor, CoreDeps } from '../core/deps.js';
import type { TLSSocket } from 'node:tls';
import { admitApiKey, apiKeyActor, apiKeyStatus, requireApiAccess } from '../core/api-keys.js';
import { trustsProxy } from '../core/config.js';
import { BrokerError } from '../core/errors.js';
import type { FleetEvents } from '../core/fleet-events.js';
import type { TunnelSample } from '../../api/index.js';
import type { AccessLayer } from '../proxy/index.js';
import { requestOrigin, schemeOf } from '../proxy/origin.js';
import { consoleCookieOf, csrfRefusal, verifyConsoleSession } from './console-session.js';

export interface HttpDeps {
  readonly core: CoreDeps;
  readonly logger: Logger;
  readonly metrics: BrokerMetrics;
  /** The current KRL (GET /v1/krl) and whether it is on disk (GET /healthz). */
  readonly revocations: { readonly krl: Buffer; health(): { written: boolean } };
  /** Other problems /healthz reports (the SSH side's, e.g. SSHD_PORT_MISMATCH); none when absent. */
  readonly problems?: () => readonly string[];
  /** Operator certificates and the proxy's auth_request endpoint (broker/proxy). */
  readonly access?: AccessLayer;
  /** The operators' console (pages, its session cookie, live events); absent: no console. */
  readonly console?: ConsoleDeps;
  /** Single sign-on into the console (broker/oidc/), when the config has an `oidc` section. */
  readonly oidc?: OidcSignIn<Koa.ParameterizedContext<AppState>>;
}

export interface ConsoleDeps {
  /** HMAC key of the console's session cookies (broker/http/console-session.ts). */
  readonly sessionSecret: Buffer;
  /** Device changes (presence, revocation, labels), for GET /v1/events. */
  readonly events: FleetEvents;
  /** Tunnels online over the last hours, oldest first. */
  tunnelSamples(): readonly TunnelSample[];
  /** The version of the KRL being served. */
  krlVersion(): bigint;
  readonly startedAt: Date;
}

export interface AppState {
  actor?: Actor;
  /** Who is asking (clientAddressFrom in broker/core/net-address.ts): set by app.ts before any route runs. */
  client?: string | null;
  /** The console's sign-in form refused a key: the failed-request limit counts it (failure-limit.ts). */
  signInFailed?: boolean;
}
export type AppContext = Koa.ParameterizedContext<AppState, RouterContext>;

/** The origin this request addressed (scheme and Host), as a browser names it. */
export function ownOrigin(ctx: Koa.ParameterizedContext<AppState>, deps: HttpDeps): URL | undefined {
  const encrypted = (ctx.req.socket as Partial<TLSSocket>).encrypted === true;
  return requestOrigin(schemeOf(ctx.req.headers, encrypted, trustsProxy(deps.core.config.api)), ctx.get('host') || undefined);
}

/**
 * The actor of a console session cookie: refused (UNAUTHENTICATED) when it is
 * not genuine, expired, or its API key no longer works; an unsafe request
 * needs the session's CSRF token and the broker's own origin. An API key's
 * role is read again from the store, so a revoked key ends its sessions.
 */
async function consoleActor(ctx: AppContext, deps: HttpDeps, secret: Buffer, cookie: string): Promise<Actor> {
  const now = deps.core.clock();
  const session = verifyConsoleSession(secret, cookie, now);
  if (!session) throw new BrokerError('UNAUTHENTICATED', 'the console session has expired or is not valid; sign in again');
  const refusal = csrfRefusal(secret, cookie, { method: ctx.method, headers: ctx.req.headers, own: ownOrigin(ctx, deps) });
  if (refusal) throw new BrokerError('CSRF_TOKEN_INVALID', refusal);
  if (session.method === 'oidc') return { id: `oidc:${session.subject}`, role: session.role, name: session.email ?? session.name, remoteAddr: clientAddress(ctx) };
  const record = await deps.core.store.findApiKey(session.subject);
  if (!record || apiKeyStatus(record, now) !== 'active') throw new BrokerError('UNAUTHENTICATED', 'the API key of this console session no longer works; sign in again');
  const actor = apiKeyActor(record, clientAddress(ctx));
  requireApiAccess(actor);
  return actor;
}

/**
 * Authenticates the API key in `Authorization: Bearer …` (or, without one,
 * the console's session cookie) and returns the actor; proxy keys are refused
 * here, on every route.
 */
export async function authenticate(ctx: AppContext, deps: HttpDeps): Promise<Actor> {
  const cookie = ctx.get('authorization') || !deps.console ? undefined : consoleCookieOf(ctx.get('cookie') || undefined);
  if (cookie !== undefined && deps.console) {
    ctx.state.actor = await consoleActor(ctx, deps, deps.console.sessionSecret, cookie);
    return ctx.state.actor;
  }
  const presented = /^Bearer (\S+)$/i.exec(ctx.get('authorization'))?.[1];
  const { actor } = await admitApiKey(deps.core, presented, { action: 'auth.failure', target: ctx.path, remoteAddr: clientAddress(ctx) });
  requireApiAccess(actor);
  ctx.state.actor = actor;
  return actor;
}

/** The client address of this request, for the audit trail and the logs. */
export function clientAddress(ctx: Koa.ParameterizedContext<AppState>): string | null {
  return ctx.state.client ?? null;
}

/** The body of every refusal (api/errors.ts). */
export function errorResponse(code: ErrorCode, message: string): ErrorResponse {
  return { error: { code, message } };
}
