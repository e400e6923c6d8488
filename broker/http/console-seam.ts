/**
 * The one door into a console session, for every way of signing in: the
 * console's API-key form (routes-console.ts) and single sign-on
 * (broker/oidc/, after a successful OpenID Connect login) call
 * startConsoleSession with the person's identity and role. It sets the
 * signed `__Host-` session cookie, audits `console.signin` with the
 * identity, and sends the browser to the console. OIDC_LOGIN_PATH is where
 * the sign-in page's "Sign in with single sign-on" link points when the
 * configuration has an `oidc` section (oidcConfigured).
 */
import type Koa from 'koa';
import { createOidcSignIn, type OidcSignIn, type OidcSignInOptions } from '../oidc/index.js';
import type { BrokerConfig } from '../core/config.js';
import { apiKeyActorId } from '../core/api-keys.js';
import { BROKER_SESSION_HOST, sessionCookieHeader } from '../proxy/session-cookie.js';
import { clientAddress, type AppState, type HttpDeps } from './context.js';
import { CONSOLE_SESSION_MINUTES, consoleCookieHeader, signConsoleSession, type ConsoleIdentity } from './console-session.js';
import { CONSOLE_PATH } from './console-pages.js';

export type { ConsoleIdentity } from './console-session.js';

/** Where the sign-in page's single sign-on link goes (served by broker/oidc/). */
export const OIDC_LOGIN_PATH = '/console/oidc/login';

/** Whether the configuration has an `oidc` section (added by the single sign-on module): then the sign-in page offers it. */
export function oidcConfigured(config: BrokerConfig): boolean {
  const section = (config as unknown as { oidc?: unknown }).oidc;
  return section !== undefined && section !== null && section !== false;
}

/** The audit trail's actor for IDENTITY: `apikey:<id>` (as the API's own rows) or `oidc:<subject>`. */
export function consoleActorId(identity: Pick<ConsoleIdentity, 'method' | 'subject'>): string {
  return identity.method === 'apikey' ? apiKeyActorId(identity.subject) : `oidc:${identity.subject}`;
}

/**
 * Signs IDENTITY in: the session cookie (CONSOLE_SESSION_MINUTES), an audit
 * row `console.signin` (method, subject, name, e-mail, role), and a 303 to
 * the console. For an API key that may reach devices, the broker-origin
 * session of the HTTP proxy is set too (broker/proxy/sign-in.ts), so that
 * "Open web page" in the console needs no second sign-in.
 */
export interface SessionStart {
  /** When the session ends (single sign-on: now + oidc.sessionMinutes); default CONSOLE_SESSION_MINUTES, never later. */
  readonly expiresAt?: Date;
  /**
   * 'page' (single sign-on): a small page that moves on to the console by
   * itself, rather than a 303. The sign-in began on the provider's site, and
   * a browser does not send a SameSite=Strict cookie on a redirect chain
   * that began cross-site; a navigation this page starts is same-site.
   */
  readonly answer?: 'redirect' | 'page';
}

/** The page a single sign-on ends with: a meta refresh (no script: the CSP allows none inline) and a link. */
function continuePage(): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${CONSOLE_PATH}"><title>Signed in</title></head><body><p>Signed in. <a href="${CONSOLE_PATH}">Continue to the console</a>.</p></body></html>`;
}

export async function startConsoleSession(ctx: Koa.ParameterizedContext<AppState>, deps: HttpDeps, identity: ConsoleIdentity, start: SessionStart = {}): Promise<void> {
  if (!deps.console) throw new Error('the console is not enabled');
  const now = deps.core.clock();
  const longest = now.getTime() + CONSOLE_SESSION_MINUTES * 60_000;
  const expires = Math.min(start.expiresAt?.getTime() ?? longest, longest);
  const maxAgeSeconds = Math.max(1, Math.floor((expires - now.getTime()) / 1000));
  const cookie = signConsoleSession(deps.console.sessionSecret, identity, new Date(now.getTime() + maxAgeSeconds * 1000));
  ctx.append('set-cookie', consoleCookieHeader(cookie, maxAgeSeconds));
  if (identity.method === 'apikey' && deps.core.config.proxy.enabled) {
    const proxy = await deps.access?.authorizer.sessionFor(identity.subject, BROKER_SESSION_HOST, Math.min(deps.core.config.proxy.sessionMinutes, CONSOLE_SESSION_MINUTES));
    // Lax, as the proxy's own sign-in sets it: the browser comes back to it by a redirect from a device hostname.
    if (proxy) ctx.append('set-cookie', sessionCookieHeader(proxy.cookie, proxy.maxAgeSeconds, 'Lax'));
  }
  await deps.core.store.appendAudit({
    at: now, actor: consoleActorId(identity), action: 'console.signin', target: null, remoteAddr: clientAddress(ctx), outcome: 'ok',
    details: { method: identity.method, subject: identity.subject, name: identity.name, email: identity.email, role: identity.role },
  });
  ctx.set('cache-control', 'no-store');
  if (start.answer === 'page') {
    ctx.status = 200;
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = continuePage();
    return;
  }
  ctx.status = 303;
  ctx.redirect(CONSOLE_PATH);
}

type ConsoleContext = Koa.ParameterizedContext<AppState>;

/**
 * Single sign-on into the console: broker/oidc/'s sign-in, whose success
 * opens a console session for the person (their subject, name, e-mail and
 * mapped role, until oidc.sessionMinutes) with a page that moves on to the
 * console (see SessionStart.answer). DEPS is asked at sign-in time: the
 * sign-in is made before the app whose deps it is part of.
 */
export function consoleSingleSignOn(
  options: Omit<OidcSignInOptions<ConsoleContext>, 'onSignedIn' | 'remoteAddress'>,
  deps: () => HttpDeps,
): OidcSignIn<ConsoleContext> {
  return createOidcSignIn<ConsoleContext>({
    ...options,
    remoteAddress: (ctx) => clientAddress(ctx),
    onSignedIn: (identity, ctx) =>
      startConsoleSession(
        ctx,
        deps(),
        { method: 'oidc', subject: identity.subject, name: identity.name ?? identity.email ?? identity.subject, email: identity.email, role: identity.role },
        { expiresAt: identity.expiresAt, answer: 'page' },
      ),
  });
}
