/**
 * Signing in, on a device hostname: no credential is ever typed here (a
 * device's page shares this origin and could imitate or read a form).
 * LOGIN_PATH and a browser's unauthenticated navigation are sent to the
 * broker's origin (sign-in.ts); CALLBACK_PATH redeems the one-time code the
 * broker sends back and sets this hostname's own session cookie.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BrokerError } from '../core/errors.js';
import { sendPage } from './answers.js';
import { loginPage, LOGIN_PATH, refusalPage, safeNext } from './pages.js';
import { brokerOriginOf, type ProxyContext } from './proxy-context.js';
import { sessionCookieHeader } from './session-cookie.js';

/** The query of a request target, parsed without trusting the rest of it (new URL throws on some targets). */
export function queryOf(req: IncomingMessage): URLSearchParams {
  const url = req.url ?? '';
  const i = url.indexOf('?');
  return new URLSearchParams(i < 0 ? '' : url.slice(i + 1));
}

/** A 303 to LOCATION, with nothing cached and nothing referred. */
export function redirect(res: ServerResponse, location: string, extra: Record<string, string> = {}): void {
  res.writeHead(303, { location, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': '0', ...extra });
  res.end();
}

/** Where DEVICENAME's visitor signs in: the broker origin's LOGIN_PATH, or undefined when the Host is unusable. */
export function brokerLoginUrl(ctx: ProxyContext, req: IncomingMessage, deviceName: string, next: string): string | undefined {
  const origin = brokerOriginOf(req, ctx);
  return origin && `${origin}${LOGIN_PATH}?${new URLSearchParams({ device: deviceName, next: safeNext(next) }).toString()}`;
}

/** Is REQ a browser opening a page (not a tool, not a script's fetch)? Those are sent to sign in. */
export function isNavigation(req: IncomingMessage): boolean {
  if ((req.method !== 'GET' && req.method !== 'HEAD') || req.headers.authorization) return false;
  const mode = req.headers['sec-fetch-mode'];
  return mode === 'navigate' || (mode === undefined && /\btext\/html\b/.test(req.headers.accept ?? ''));
}

/** LOGIN_PATH on a device hostname: a redirect to the broker's origin (GET), nothing else. */
export function handleLogin(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, deviceName: string): void {
  const next = queryOf(req).get('next') ?? '/';
  const target = req.method === 'GET' || req.method === 'HEAD' ? brokerLoginUrl(ctx, req, deviceName, next) : undefined;
  if (target) return redirect(res, target);
  sendPage(res, loginPage({ device: deviceName, next }), { allow: 'GET' }, req.method === 'GET' || req.method === 'HEAD' ? 400 : 405);
}

/** CALLBACK_PATH on HOST: the one-time code redeemed (for this device only) into HOST's session cookie. */
export async function handleCallback(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, deviceName: string, host: string): Promise<void> {
  const query = queryOf(req);
  const next = safeNext(query.get('next') ?? '/');
  let keyId: string;
  try {
    ({ keyId } = ctx.codes.redeem(query.get('code') ?? '', deviceName));
  } catch (err) {
    if (!(err instanceof BrokerError)) throw err;
    ctx.metrics?.proxyLogins.inc({ outcome: err.code });
    sendPage(res, refusalPage({ code: err.code, device: deviceName, message: err.message, now: ctx.clock() }, err.status));
    return;
  }
  const session = await ctx.authorizer.sessionFor(keyId, host, ctx.sessionMinutes);
  if (!session) return sendPage(res, loginPage({ device: deviceName, next, error: 'That API key may no longer reach devices.' }));
  redirect(res, next, { 'set-cookie': sessionCookieHeader(session.cookie, session.maxAgeSeconds) });
}
