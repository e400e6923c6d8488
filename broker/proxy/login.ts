/**
 * The login form on a device hostname (GET and POST /.certunnel/login): an
 * operator's API key typed into the broker's own page becomes the session
 * cookie for that hostname alone. Only a form of this very origin may post
 * here (login CSRF), and the form's body is small.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BrokerError } from '../core/errors.js';
import { sendPage } from './answers.js';
import { hostOf } from './hostname.js';
import { loginPage, refusalPage, safeNext } from './pages.js';
import { clientOf, type ProxyContext } from './proxy-context.js';
import { sessionCookieHeader } from './session-cookie.js';

const LOGIN_BODY_LIMIT = 4096;

function readSmallBody(req: IncomingMessage, limit: number): Promise<string> {
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

/** Is this a cross-site post (its Origin another host, or Sec-Fetch-Site not same-origin)? */
function isCrossSite(req: IncomingMessage, host: string): boolean {
  const origin = req.headers.origin;
  const site = req.headers['sec-fetch-site'];
  return Boolean((origin && origin !== 'null' && hostOf(new URL(origin, 'http://invalid').host) !== host) || (site && site !== 'same-origin' && site !== 'none'));
}

/** The login route for DEVICENAME at HOST: the form, or a posted key checked and turned into a session. */
export async function handleLogin(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, deviceName: string, host: string): Promise<void> {
  const { authorizer, metrics, clock } = ctx;
  if (req.method === 'GET' || req.method === 'HEAD') {
    const next = new URL(req.url ?? '/', 'http://x').searchParams.get('next') ?? '/';
    sendPage(res, loginPage({ device: deviceName, next }), {}, 200);
    return;
  }
  if (req.method !== 'POST') {
    sendPage(res, loginPage({ device: deviceName, next: '/' }), { allow: 'GET, POST' }, 405);
    return;
  }
  if (isCrossSite(req, host)) {
    metrics?.proxyLogins.inc({ outcome: 'CROSS_SITE' });
    sendPage(res, refusalPage({ code: 'FORBIDDEN', device: deviceName, message: 'cross-site login refused', now: clock() }, 403));
    return;
  }
  const form = new URLSearchParams(await readSmallBody(req, LOGIN_BODY_LIMIT));
  const next = safeNext(form.get('next') ?? '/');
  const client = clientOf(req, ctx);
  try {
    const result = await authorizer.login({ deviceName, host, remoteAddr: client }, (form.get('apiKey') ?? '').trim(), ctx.sessionMinutes);
    metrics?.proxyLogins.inc({ outcome: 'ok' });
    res.writeHead(303, { location: next, 'set-cookie': sessionCookieHeader(result.cookie, result.maxAgeSeconds), 'cache-control': 'no-store', 'content-length': '0' });
    res.end();
  } catch (err) {
    if (!(err instanceof BrokerError)) throw err;
    metrics?.proxyLogins.inc({ outcome: err.code });
    if (err.code === 'FORBIDDEN') sendPage(res, refusalPage({ code: 'FORBIDDEN', device: deviceName, message: err.message, now: clock() }, 403));
    else if (err.code === 'RATE_LIMITED') {
      const retryAfterSeconds = authorizer.retryAfterSeconds(client);
      const page = loginPage({ device: deviceName, next, error: `Too many API keys that were not accepted came from your address. Try again in ${retryAfterSeconds} seconds.` });
      sendPage(res, page, { 'retry-after': String(retryAfterSeconds), 'x-certunnel-error': 'RATE_LIMITED' }, 429);
    } else sendPage(res, loginPage({ device: deviceName, next, error: 'That API key was not accepted.' }));
  }
}
