/**
 * Signing in, on the broker's own origin (the API host): the only place an
 * operator types a credential. GET LOGIN_PATH?device=&next= shows the form,
 * or, for an operator already signed in here (a host-only session cookie
 * for this origin), goes straight on; POST checks the key (same origin
 * only: login CSRF), then the browser is sent to the device hostname's
 * CALLBACK_PATH with a one-time code bound to that device and that key.
 * The `device` parameter alone decides the hostname the code goes to.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { DEVICE_NAME } from '../../api/index.js';
import { BrokerError, ERROR_STATUS, type ErrorCode } from '../core/errors.js';
import { sendPage } from './answers.js';
import { queryOf, redirect } from './login.js';
import { crossOriginRefusal } from './origin.js';
import { CALLBACK_PATH, loggedOutPage, LOGIN_PATH, LOGOUT_PATH, refusalPage, safeNext, signInPage, signInPageHeaders, type Page } from './pages.js';
import { clientOf, deviceOriginOf, ownOriginOf, type ProxyContext } from './proxy-context.js';
import { BROKER_SESSION_HOST, clearSessionCookieHeader, sessionCookieHeader } from './session-cookie.js';

const LOGIN_BODY_LIMIT = 4096;

/** The body of a small form (a sign-in), refused past LIMIT bytes (BODY_TOO_LARGE); the console's sign-in reads its form with it too. */
export function readSmallBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new BrokerError('BODY_TOO_LARGE', 'login form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
  });
}

function refuse(ctx: ProxyContext, res: ServerResponse, code: ErrorCode, message: string, device = ''): void {
  ctx.metrics?.proxyLogins.inc({ outcome: code });
  sendPage(res, refusalPage({ code, device, message, now: ctx.clock() }, ERROR_STATUS[code]));
}

/** The form for DEVICE, allowed to post to the broker and be redirected to device hostnames. */
function sendForm(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, page: Page, status: number, extra: Record<string, string> = {}): void {
  const { protocol } = new URL(deviceOriginOf(req, ctx, 'x')!);
  sendPage(res, page, { ...signInPageHeaders(`${protocol}//*.${ctx.domain}:*`), ...extra }, status);
}

/** A fresh code for KEYID and DEVICE, handed to the device hostname's callback. */
function sendToDevice(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, keyId: string, device: string, next: string, extra: Record<string, string> = {}): void {
  const code = ctx.codes.mint({ keyId, deviceName: device });
  redirect(res, `${deviceOriginOf(req, ctx, device)!}${CALLBACK_PATH}?${new URLSearchParams({ code, next }).toString()}`, extra);
}

async function postLogin(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const origin = req.headers.origin;
  if (origin !== undefined && !URL.canParse(origin)) return refuse(ctx, res, 'BAD_REQUEST', 'the Origin header is not a URL');
  if (crossOriginRefusal({ method: 'POST', headers: req.headers, own: ownOriginOf(req, ctx), upgrade: false })) {
    return refuse(ctx, res, 'FORBIDDEN', 'cross-site sign-in refused');
  }
  const form = new URLSearchParams(await readSmallBody(req, LOGIN_BODY_LIMIT));
  const device = form.get('device') ?? '';
  if (!DEVICE_NAME.test(device)) return refuse(ctx, res, 'BAD_REQUEST', 'device must be a device name');
  const next = safeNext(form.get('next') ?? '/');
  const client = clientOf(req, ctx);
  try {
    const result = await ctx.authorizer.login({ deviceName: device, host: BROKER_SESSION_HOST, remoteAddr: client }, (form.get('apiKey') ?? '').trim(), ctx.sessionMinutes);
    ctx.metrics?.proxyLogins.inc({ outcome: 'ok' });
    sendToDevice(ctx, req, res, result.keyId, device, next, { 'set-cookie': sessionCookieHeader(result.cookie, result.maxAgeSeconds, 'Lax') });
  } catch (err) {
    if (!(err instanceof BrokerError)) throw err;
    ctx.metrics?.proxyLogins.inc({ outcome: err.code });
    if (err.code === 'FORBIDDEN') return sendPage(res, refusalPage({ code: 'FORBIDDEN', device, message: err.message, now: ctx.clock() }, 403));
    if (err.code !== 'RATE_LIMITED') return sendForm(ctx, req, res, signInPage({ device, next, error: 'That API key was not accepted.' }), 401);
    const retryAfterSeconds = ctx.authorizer.retryAfterSeconds(client);
    const page = signInPage({ device, next, error: `Too many API keys that were not accepted came from your address. Try again in ${retryAfterSeconds} seconds.` });
    sendForm(ctx, req, res, page, 429, { 'retry-after': String(retryAfterSeconds), 'x-certunnel-error': 'RATE_LIMITED' });
  }
}

/** /.certunnel/* on the broker's origin: sign in (LOGIN_PATH), sign out (LOGOUT_PATH); anything else NOT_FOUND. */
export async function serveSignIn(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0]!;
  if (path === LOGOUT_PATH) return sendPage(res, loggedOutPage(), { 'set-cookie': clearSessionCookieHeader() });
  if (path !== LOGIN_PATH) return refuse(ctx, res, 'NOT_FOUND', 'no such page');
  if (!ownOriginOf(req, ctx)) return refuse(ctx, res, 'BAD_REQUEST', 'the Host header is not a host name');
  if (req.method === 'POST') return postLogin(ctx, req, res);
  if (req.method !== 'GET' && req.method !== 'HEAD') return refuse(ctx, res, 'BAD_REQUEST', 'sign in with GET or POST');
  const query = queryOf(req);
  const device = query.get('device') ?? '';
  if (!DEVICE_NAME.test(device)) return refuse(ctx, res, 'BAD_REQUEST', 'device must be a device name');
  const next = safeNext(query.get('next') ?? '/');
  const keyId = await ctx.authorizer.signedInKey(req.headers.cookie, BROKER_SESSION_HOST);
  if (keyId) return sendToDevice(ctx, req, res, keyId, device, next);
  sendForm(ctx, req, res, signInPage({ device, next }), 200);
}
