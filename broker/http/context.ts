/**
 * What every route handler shares: the dependencies handed to the koa
 * application, the request state, the API-key check (`Authorization:
 * Bearer …`) and the body of a refusal. The route files and app.ts import
 * this file; it imports neither, so the http room has no import loop.
 */
import type { RouterContext } from '@koa/router';
import type Koa from 'koa';
import type { Logger } from '../telemetry/logger.js';
import type { BrokerMetrics } from '../telemetry/metrics.js';
import type { ErrorCode, ErrorResponse } from '../../api/index.js';
import type { Actor, CoreDeps } from '../core/deps.js';
import { admitApiKey, requireApiAccess } from '../core/api-keys.js';
import type { AccessLayer } from '../proxy/index.js';

export interface HttpDeps {
  readonly core: CoreDeps;
  readonly logger: Logger;
  readonly metrics: BrokerMetrics;
  /** The current KRL (GET /v1/krl) and whether it is on disk (GET /healthz). */
  readonly revocations: { readonly krl: Buffer; health(): { written: boolean } };
  /** Other problems /healthz reports (the SSH side's, e.g. SSHD_PORT_MISMATCH); none when absent. */
  readonly problems?: () => readonly string[];
  readonly publicKeys: { userCa: string; hostCa: string; hostKey: string };
  readonly apiPin: string | null;
  /** Operator certificates and the proxy's auth_request endpoint (broker/proxy). */
  readonly access?: AccessLayer;
}

export interface AppState {
  actor?: Actor;
  /** Who is asking (clientAddressFrom in broker/core/net-address.ts): set by app.ts before any route runs. */
  client?: string | null;
}
export type AppContext = Koa.ParameterizedContext<AppState, RouterContext>;

/** Authenticates the API key in `Authorization: Bearer …` and returns the actor; proxy keys are refused here, on every route. */
export async function authenticate(ctx: AppContext, deps: HttpDeps): Promise<Actor> {
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
