/**
 * Single sign-on to the console with OpenID Connect, on the broker's own
 * origin (the API host), the only place credentials are handled:
 *
 *   GET /console/oidc/login?next=/console/…   → the provider (code + PKCE S256, state, nonce)
 *   GET /console/oidc/callback?code=&state=   → checks, exchange, claims → role → onSignedIn
 *
 * The flow's state lives in a sealed `__Host-` cookie (flow-state.ts says
 * why). A refused callback ends on a page with a stable code
 * (OIDC_STATE_INVALID, OIDC_STATE_EXPIRED, OIDC_PROVIDER_REFUSED,
 * OIDC_TOKEN_INVALID, OIDC_PROVIDER_UNAVAILABLE, OIDC_NO_ROLE), changes
 * nothing but clearing the flow cookie, and is an audit event
 * (`oidc.signin`, through the failure aggregator); a success is audited as
 * `oidc.signin` ok with the person's subject, e-mail and role, then handed
 * to onSignedIn, which opens the console's session.
 *
 * No koa import: the handlers take any context shaped like koa's
 * (OidcHttpContext), so the http room mounts them and this room stays
 * free of the web framework.
 */
import { BrokerError, isBrokerError } from '../core/errors.js';
import { OIDC_CALLBACK_PATH, OIDC_LOGIN_PATH, type OidcConfig } from '../core/oidc-config.js';
import type { AuditSink } from '../core/failure-audit.js';
import type { Logger } from '../telemetry/logger.js';
import { readCookie } from '../proxy/session-cookie.js';
import { safeNext } from '../proxy/pages.js';
import { auditedValues, hasClaim, identityFromClaims, oidcActor, type OidcIdentity } from './claims.js';
import { clearFlowCookieHeader, deriveFlowKey, FLOW_COOKIE, flowCookieHeader, openFlow, sameState, sealFlow, UsedStates } from './flow-state.js';
import { oidcRefusalPage, providerErrorName, type OidcRefusalCode } from './pages.js';
import { ProviderClient } from './provider-client.js';

export { OIDC_CALLBACK_PATH, OIDC_LOGIN_PATH } from '../core/oidc-config.js';
export type { OidcIdentity } from './claims.js';
export { readOidcClientSecret, OIDC_CLIENT_SECRET_ENV } from './client-secret.js';

/** The part of a koa context the handlers use (a koa ParameterizedContext is one). */
export interface OidcHttpContext {
  readonly method: string;
  readonly path: string;
  readonly querystring: string;
  get(field: string): string;
  set(field: string, value: string): void;
  append(field: string, value: string | string[]): void;
  status: number;
  body: unknown;
}

export interface OidcSignInOptions<C extends OidcHttpContext> {
  readonly config: OidcConfig;
  /**
   * The API's public URL (https://broker.example.com), for the default redirect URLs: a string, or a function
   * asked on first use (the broker knows its URL only once it listens, when api.publicUrl is not set).
   */
  readonly publicUrl: string | (() => string);
  /** From readOidcClientSecret; undefined only for a public client. */
  readonly clientSecret: string | undefined;
  /** The broker's session key (at least 32 bytes): the flow cookie's sealing key is derived from it. */
  readonly sessionSecret: Buffer;
  /** Successful sign-ins (the store). */
  readonly audit: AuditSink;
  /** Refusals (the failure aggregator in front of the store, or the store). */
  readonly failureAudit: AuditSink;
  readonly clock: () => Date;
  readonly logger: Logger;
  /** The client address of a request (the API's, which honours api.trustProxy). */
  remoteAddress(ctx: C): string | null;
  /** Opens the console's session for IDENTITY and answers the request (a redirect to NEXT, a same-origin path). */
  onSignedIn(identity: OidcIdentity, ctx: C, after: { readonly next: string }): Promise<void> | void;
}

export interface OidcSignIn<C extends OidcHttpContext> {
  /** koa middleware: answers GET OIDC_LOGIN_PATH and OIDC_CALLBACK_PATH (other methods there: NOT_FOUND), passes everything else on. */
  middleware(ctx: C, next: () => Promise<unknown>): Promise<void>;
  login(ctx: C): Promise<void>;
  callback(ctx: C): Promise<void>;
  /**
   * Where the console's logout sends the browser after clearing its own
   * session: the provider's end_session_endpoint (RP-initiated logout), or
   * undefined when the provider has none (or cannot be reached: the local
   * logout must not wait on it).
   */
  logoutUrl(options?: { readonly idTokenHint?: string; readonly postLogoutRedirectUrl?: string }): Promise<URL | undefined>;
  /** Discovers the provider now (at start, to log a problem early); throws OIDC_PROVIDER_UNAVAILABLE. */
  ready(): Promise<void>;
  /** The redirect URI sent to the provider (register it there). */
  redirectUrl(): string;
}

function render(ctx: OidcHttpContext, code: OidcRefusalCode, providerError?: string): void {
  const page = oidcRefusalPage(code, providerError);
  for (const [k, v] of Object.entries(page.headers)) ctx.set(k, v);
  ctx.append('set-cookie', clearFlowCookieHeader());
  ctx.status = page.status;
  ctx.body = page.html;
}

export function createOidcSignIn<C extends OidcHttpContext>(o: OidcSignInOptions<C>): OidcSignIn<C> {
  const base = (): string => (typeof o.publicUrl === 'string' ? o.publicUrl : o.publicUrl()).replace(/\/+$/, '');
  const redirectUrl = (): string => o.config.redirectUrl ?? `${base()}${OIDC_CALLBACK_PATH}`;
  const postLogoutRedirectUrl = (): string => o.config.postLogoutRedirectUrl ?? `${base()}/console/`;
  const provider = new ProviderClient({ config: o.config, clientSecret: o.clientSecret, redirectUrl });
  const key = deriveFlowKey(o.sessionSecret);
  const timeoutMs = o.config.loginTimeoutSeconds * 1000;
  const used = new UsedStates(timeoutMs);
  const log = o.logger.child({ component: 'oidc' });

  const refuse = async (ctx: C, code: OidcRefusalCode, details: Record<string, unknown>, who?: string, providerError?: string): Promise<void> => {
    await o.failureAudit
      .appendAudit({ at: o.clock(), actor: who ? oidcActor(who) : 'anonymous', action: 'oidc.signin', target: null, remoteAddr: o.remoteAddress(ctx), outcome: code === 'BAD_REQUEST' ? 'BAD_REQUEST' : code, details })
      .catch((err: unknown) => log.error({ err }, 'audit write failed'));
    render(ctx, code, providerError);
  };

  const login = async (ctx: C): Promise<void> => {
    ctx.set('cache-control', 'no-store');
    const next = safeNext(new URLSearchParams(ctx.querystring).get('next') ?? '/console/');
    let request;
    try {
      request = await provider.authorizationRequest();
    } catch (err) {
      if (!isBrokerError(err)) throw err;
      log.warn({ code: err.code, reason: err.message }, 'single sign-on cannot start');
      return render(ctx, err.code as OidcRefusalCode);
    }
    const sealed = sealFlow(key, { state: request.state, nonce: request.nonce, codeVerifier: request.codeVerifier, next, startedAt: o.clock().getTime() });
    ctx.append('set-cookie', flowCookieHeader(sealed, o.config.loginTimeoutSeconds));
    ctx.set('location', request.url.href);
    ctx.set('referrer-policy', 'no-referrer');
    ctx.status = 302;
    ctx.body = 'Redirecting to the identity provider';
  };

  const callback = async (ctx: C): Promise<void> => {
    ctx.set('cache-control', 'no-store');
    const query = new URLSearchParams(ctx.querystring);
    const flow = openFlow(key, readCookie(ctx.get('cookie') || undefined, FLOW_COOKIE));
    if (!flow) return refuse(ctx, 'OIDC_STATE_INVALID', { reason: 'no sign-in started in this browser (flow cookie missing or not genuine)' });
    if (!sameState(query.get('state'), flow.state)) return refuse(ctx, 'OIDC_STATE_INVALID', { reason: 'state does not match this browser\'s sign-in' });
    const now = o.clock().getTime();
    if (now - flow.startedAt > timeoutMs || now < flow.startedAt - 60_000) return refuse(ctx, 'OIDC_STATE_EXPIRED', { startedAt: new Date(flow.startedAt).toISOString() });
    if (!used.consume(flow.state, now)) return refuse(ctx, 'OIDC_STATE_INVALID', { reason: 'callback replayed' });
    if (query.has('error')) {
      const shown = providerErrorName(query.get('error'));
      return refuse(ctx, 'OIDC_PROVIDER_REFUSED', { providerError: shown }, undefined, shown);
    }
    if (!query.get('code')) return refuse(ctx, 'BAD_REQUEST', { reason: 'no code' });
    let claims: Record<string, unknown>;
    try {
      claims = await provider.exchange(query, flow, (c) => hasClaim(c, o.config.groupsClaim));
    } catch (err) {
      if (!isBrokerError(err)) throw err;
      log.warn({ code: err.code, reason: err.message }, 'single sign-on refused');
      return refuse(ctx, err.code as OidcRefusalCode, { reason: err.message });
    }
    const result = identityFromClaims(claims, o.config, o.config.issuer, o.clock());
    if (!result.ok) {
      log.info({ subject: result.subject }, 'single sign-on: no mapped role');
      return refuse(ctx, 'OIDC_NO_ROLE', { issuer: o.config.issuer, email: result.email, values: auditedValues(result.values) }, result.subject);
    }
    const { identity } = result;
    await o.audit.appendAudit({
      at: o.clock(), actor: oidcActor(identity.subject), action: 'oidc.signin', target: null, remoteAddr: o.remoteAddress(ctx), outcome: 'ok',
      details: { issuer: identity.issuer, email: identity.email, name: identity.name, role: identity.role },
    });
    ctx.append('set-cookie', clearFlowCookieHeader());
    await o.onSignedIn(identity, ctx, { next: flow.next });
  };

  return {
    redirectUrl,
    login,
    callback,
    async middleware(ctx, next) {
      const route = ctx.path === OIDC_LOGIN_PATH ? login : ctx.path === OIDC_CALLBACK_PATH ? callback : undefined;
      if (!route) {
        await next();
        return;
      }
      // GET only: a HEAD (a link checker) must not spend the one-time code.
      if (ctx.method !== 'GET') throw new BrokerError('NOT_FOUND', 'no such route');
      await route(ctx);
    },
    async logoutUrl(options = {}) {
      try {
        return await provider.endSessionUrl(options.postLogoutRedirectUrl ?? postLogoutRedirectUrl(), options.idTokenHint);
      } catch (err) {
        log.warn({ reason: (err as Error).message }, 'single sign-on: no provider logout');
        return undefined;
      }
    },
    async ready() {
      await provider.configuration();
    },
  };
}
