/**
 * The operators' console on the broker's own origin: its pages (the sign-in
 * form, the shell) and assets, served by consolePages ahead of the API's
 * JSON-only body rule (the sign-in form posts urlencoded); and its API
 * routes: who is signed in (with the CSRF token), signing out, and the live
 * device events (server-sent events). Everything else the console shows
 * comes from the same API routes the CLI calls, under the same roles.
 */
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import type Router from '@koa/router';
import type Koa from 'koa';
import type { ConsoleSessionResponse, DevicesChangedEvent } from '../../api/index.js';
import { admitApiKey, requireApiAccess, requireRole } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { crossOriginRefusal } from '../proxy/origin.js';
import { readSmallBody } from '../proxy/sign-in.js';
import { clearSessionCookieHeader } from '../proxy/session-cookie.js';
import { authenticate, clientAddress, ownOrigin, type AppContext, type AppState, type ConsoleDeps, type HttpDeps } from './context.js';
import { CONSOLE_ASSETS_PATH, CONSOLE_PAGE_HEADERS, CONSOLE_PATH, CONSOLE_SIGN_IN_PATH, consoleShellPage, consoleSignInPage } from './console-pages.js';
import { OIDC_LOGIN_PATH, oidcConfigured, startConsoleSession } from './console-seam.js';
import { clearConsoleCookieHeader, consoleCookieOf, csrfTokenOf, verifyConsoleSession } from './console-session.js';

const SIGN_IN_BODY_LIMIT = 4096;
/** Open live-event streams, across all consoles: each holds a socket and a listener. */
const MAX_EVENT_STREAMS = 200;
const EVENT_BATCH_MS = 200;
const EVENT_PING_MS = 15_000;

interface Asset {
  readonly type: string;
  readonly body: Buffer;
  readonly gzip: Buffer;
}

/** The shipped assets, read once: built into the package beside this file (no CDN). */
const ASSET_TYPES: Readonly<Record<string, string>> = {
  'console.js': 'text/javascript; charset=utf-8', 'console.css': 'text/css; charset=utf-8', 'favicon.svg': 'image/svg+xml',
};
let assets: Map<string, Asset> | undefined;
function loadAssets(): Map<string, Asset> {
  assets ??= new Map(
    Object.entries(ASSET_TYPES).map(([name, type]) => {
      const body = readFileSync(new URL(`./console-assets/${name}`, import.meta.url));
      return [name, { type, body, gzip: gzipSync(body, { level: 9 }) }];
    }),
  );
  return assets;
}

/** The shipped assets' sizes, raw and gzip-compressed (what a browser downloads). */
export function consoleAssetSizes(): { name: string; bytes: number; gzipBytes: number }[] {
  return [...loadAssets()].map(([name, a]) => ({ name, bytes: a.body.length, gzipBytes: a.gzip.length }));
}

function sendHtml(ctx: Koa.ParameterizedContext<AppState>, html: string, status = 200): void {
  ctx.set(CONSOLE_PAGE_HEADERS);
  ctx.status = status;
  ctx.body = html;
}

function sendAsset(ctx: Koa.ParameterizedContext<AppState>, name: string): void {
  const asset = loadAssets().get(name);
  if (!asset) throw new BrokerError('NOT_FOUND', 'no such asset');
  ctx.set({ 'content-type': asset.type, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff', vary: 'accept-encoding' });
  if (ctx.acceptsEncodings('gzip', 'identity') === 'gzip') {
    ctx.set('content-encoding', 'gzip');
    ctx.body = asset.gzip;
  } else {
    ctx.body = asset.body;
  }
}

function signInPage(deps: HttpDeps, error?: string): string {
  return consoleSignInPage({ error, ssoPath: oidcConfigured(deps.core.config) ? OIDC_LOGIN_PATH : undefined });
}

/** POST /console/sign-in: an API key from the form; same origin only (login CSRF). */
async function postSignIn(ctx: Koa.ParameterizedContext<AppState>, deps: HttpDeps): Promise<void> {
  if (crossOriginRefusal({ method: 'POST', headers: ctx.req.headers, own: ownOrigin(ctx, deps), upgrade: false })) {
    return sendHtml(ctx, signInPage(deps, 'Sign-in from another site refused.'), 403);
  }
  if (!ctx.is('application/x-www-form-urlencoded')) return sendHtml(ctx, signInPage(deps, 'Sign in with the form.'), 415);
  const form = new URLSearchParams(await readSmallBody(ctx.req, SIGN_IN_BODY_LIMIT));
  const door = { action: 'console.signin', target: null, remoteAddr: clientAddress(ctx), details: { method: 'apikey' } };
  let admitted: Awaited<ReturnType<typeof admitApiKey>> | undefined;
  try {
    admitted = await admitApiKey(deps.core, (form.get('apiKey') ?? '').trim(), door);
    requireApiAccess(admitted.actor);
  } catch (err) {
    if (!(err instanceof BrokerError)) throw err;
    ctx.state.signInFailed = true;
    if (admitted) {
      await deps.core.store.appendAudit({ at: deps.core.clock(), actor: admitted.actor.id, action: 'console.signin', target: null, remoteAddr: clientAddress(ctx), outcome: err.code, details: door.details });
      return sendHtml(ctx, signInPage(deps, 'A proxy key opens device web pages only; the console needs a key of role admin, operator or provisioner.'), 403);
    }
    ctx.set('x-certunnel-error', err.code);
    return sendHtml(ctx, signInPage(deps, 'That API key was not accepted.'), 401);
  }
  const { record } = admitted;
  if (record.role === 'proxy') throw new BrokerError('INTERNAL', 'unreachable: proxy keys are refused above');
  await startConsoleSession(ctx, deps, { method: 'apikey', subject: record.id, name: record.name, email: null, role: record.role });
}

/**
 * The console's pages, ahead of the API's body rules: / and /console go to
 * the console, which shows the shell to a signed-in person and the sign-in
 * form to anyone else; its assets; the sign-in form and its POST.
 */
export function consolePages(deps: HttpDeps, c: ConsoleDeps): Koa.Middleware<AppState> {
  return async (ctx, next) => {
    const path = ctx.path;
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD' && !(ctx.method === 'POST' && path === CONSOLE_SIGN_IN_PATH)) return next();
    if (path === '/' || path === '/console') return ctx.redirect(CONSOLE_PATH);
    if (path === CONSOLE_SIGN_IN_PATH) return ctx.method === 'POST' ? postSignIn(ctx, deps) : sendHtml(ctx, signInPage(deps));
    if (path.startsWith(CONSOLE_ASSETS_PATH)) return sendAsset(ctx, path.slice(CONSOLE_ASSETS_PATH.length));
    if (path === CONSOLE_PATH) {
      const cookie = consoleCookieOf(ctx.get('cookie') || undefined);
      if (!cookie || !verifyConsoleSession(c.sessionSecret, cookie, deps.core.clock())) return ctx.redirect(CONSOLE_SIGN_IN_PATH);
      return sendHtml(ctx, consoleShellPage());
    }
    return next();
  };
}

/** The live device events of one console: ids of changed devices, batched; ends when the session no longer works. */
function streamDeviceEvents(ctx: AppContext, deps: HttpDeps, c: ConsoleDeps): void {
  // Written to the response directly (koa's stream piping reports a browser closing the tab as an error).
  ctx.respond = false;
  const res = ctx.res;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', 'x-content-type-options': 'nosniff' });
  ctx.req.socket.setNoDelay(true);
  ctx.req.socket.setTimeout(0);
  const send = (text: string): void => {
    if (!res.writableEnded && !res.destroyed) res.write(text);
  };
  send('retry: 2000\n\n');
  const pending = new Set<string>();
  let batch: NodeJS.Timeout | undefined;
  const flush = (): void => {
    batch = undefined;
    const data: DevicesChangedEvent = { ids: [...pending] };
    pending.clear();
    send(`event: devices\ndata: ${JSON.stringify(data)}\n\n`);
  };
  const off = c.events.onDevicesChanged((ids) => {
    for (const id of ids) pending.add(id);
    batch ??= setTimeout(flush, EVENT_BATCH_MS);
  });
  const close = (): void => {
    off();
    clearInterval(ping);
    clearTimeout(batch);
    if (!res.writableEnded) res.end();
  };
  const ping = setInterval(() => {
    // A session that expired, or whose key was revoked, ends its stream.
    authenticate(ctx, deps).then(() => send(': ping\n\n'), close);
  }, EVENT_PING_MS);
  res.once('close', close);
  ctx.req.once('close', close);
}

export function registerConsoleRoutes(router: Router<AppState>, deps: HttpDeps, c: ConsoleDeps): void {
  router.get('/v1/console/session', async (ctx) => {
    const cookie = consoleCookieOf(ctx.get('cookie') || undefined);
    const session = cookie ? verifyConsoleSession(c.sessionSecret, cookie, deps.core.clock()) : undefined;
    if (!cookie || !session) throw new BrokerError('UNAUTHENTICATED', 'no console session; sign in at /console/sign-in');
    const actor = await authenticate(ctx, deps);
    ctx.set('cache-control', 'no-store');
    ctx.body = {
      method: session.method, subject: session.subject, name: session.name, email: session.email,
      role: actor.role === 'proxy' || actor.role === undefined ? session.role : actor.role,
      expiresAt: session.expiresAt.toISOString(), csrfToken: csrfTokenOf(c.sessionSecret, cookie),
      deviceWebPages: deps.core.config.proxy.enabled,
    } satisfies ConsoleSessionResponse;
  });

  router.post('/v1/console/sign-out', async (ctx) => {
    const actor = await authenticate(ctx, deps);
    await deps.core.store.appendAudit({ at: deps.core.clock(), actor: actor.id, action: 'console.signout', target: null, remoteAddr: clientAddress(ctx), outcome: 'ok', details: { name: actor.name } });
    ctx.append('set-cookie', clearConsoleCookieHeader());
    ctx.append('set-cookie', clearSessionCookieHeader());
    // A single sign-on session ends at the provider too, when it offers RP-initiated logout.
    const next = actor.id.startsWith('oidc:') && deps.oidc ? await deps.oidc.logoutUrl() : undefined;
    ctx.body = next ? { signedOut: true, next: next.href } : { signedOut: true };
  });

  router.get('/v1/events', async (ctx) => {
    requireRole(await authenticate(ctx, deps), ['admin', 'operator']);
    if (c.events.listenerCount() >= MAX_EVENT_STREAMS) throw new BrokerError('RATE_LIMITED', 'too many live consoles are open');
    streamDeviceEvents(ctx, deps, c);
  });
}
