/**
 * The HTTP reverse proxy by hostname: `https://<device-name>.<domain>/…`
 * is relayed to the device's http slot, a port on the broker's loopback
 * that the device's tunnel holds. Node's http, no framework: requests and
 * responses stream both ways with backpressure (pipeline), upstream
 * connections are kept alive (each one is an SSH channel to the device,
 * worth reusing), and WebSocket (any Upgrade) requests become a raw
 * two-way pipe once authorized.
 *
 * What is relayed: method, path, the headers minus hop-by-hop ones (RFC 9110
 * section 7.6.1) and minus the broker's credentials (bearer API key,
 * session cookie), plus X-Forwarded-For/-Proto/-Host. Behind a proxy the
 * broker trusts (api.trustProxy) the incoming X-Forwarded-* are the
 * proxy's and are extended; otherwise they are the client's and are
 * replaced. The Host header stays the device hostname.
 */
import { request as httpRequest, STATUS_CODES, type Agent, type ClientRequest, type IncomingMessage, type RequestOptions, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { TUNNEL_HOST } from '../../api/tunnel.js';
import { clientAddressFrom } from '../core/net-address.js';
import type { TunnelPresence } from '../core/presence.js';
import { openUpstream, UpstreamPool } from './upstream-pool.js';
import { BrokerError, ERROR_STATUS, type ErrorCode } from '../core/errors.js';
import type { Logger } from '../telemetry/logger.js';
import type { BrokerMetrics } from '../telemetry/metrics.js';
import { LOGIN_PATH, LOGOUT_PATH, PAGE_HEADERS, loggedOutPage, loginPage, refusalPage, safeNext, type Page } from './pages.js';
import { type ForwardedCredentials, type ProxyAuthorizer, type ProxyDecision } from './proxy-auth.js';
import { clearSessionCookieHeader, SESSION_COOKIE, sessionCookieHeader, setsCookie } from './session-cookie.js';
import { hostOf } from './hostname.js';
import { RESERVED_PREFIX } from '../../api/access.js';

export interface DeviceProxyOptions {
  readonly authorizer: ProxyAuthorizer;
  /** With dial (embedded gateway), upstream connections are SSH channels opened in process; else TCP to 127.0.0.1:<port>. */
  readonly presence: TunnelPresence;
  readonly logger: Logger;
  readonly clock: () => Date;
  /** api.trustProxy (trustsProxy): the proxy in front sets X-Forwarded-*, which are believed and extended. */
  readonly behindProxy: boolean;
  readonly sessionMinutes: number;
  readonly metrics?: ProxyMetrics;
}

export type ProxyMetrics = Pick<BrokerMetrics, 'proxyRequests' | 'proxyUpstreamSeconds' | 'proxyLogins' | 'proxyWebsockets'>;

export interface DeviceProxy {
  handleRequest(req: IncomingMessage, res: ServerResponse, deviceName: string): void;
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, deviceName: string): void;
  /** Drops kept-alive upstream connections and open WebSocket relays. */
  close(): void;
}

const LOGIN_BODY_LIMIT = 4096;
/** RFC 9110 section 7.6.1 and friends: meaningful for one connection only. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);
/** Set by the broker (or by the proxy in front of it); a client's own values are not believed. */
const FORWARDING = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded', 'x-real-ip']);

const NO_TOKENS: ReadonlySet<string> = new Set();
const KEEP_ALIVE: ReadonlySet<string> = new Set(['keep-alive']);

function connectionTokens(value: string | string[] | undefined): ReadonlySet<string> {
  // The usual values, without building a set per message.
  if (value === undefined || value === 'keep-alive' || value === 'close') return value === 'keep-alive' ? KEEP_ALIVE : NO_TOKENS;
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  return new Set(text.split(',').map((t) => t.trim().toLowerCase()).filter(Boolean));
}

function remoteAddressOf(req: IncomingMessage): string {
  return req.socket.remoteAddress ?? '';
}

/** Who is asking, for the audit log and the failure limiter (see clientAddressFrom). */
function clientOf(req: IncomingMessage, behindProxy: boolean): string | null {
  return clientAddressFrom(req.socket.remoteAddress, req.headers['x-forwarded-for'], behindProxy);
}

/** Request headers for the device, as a raw [name, value, …] list (order and case kept). */
export function upstreamHeaders(
  req: Pick<IncomingMessage, 'rawHeaders' | 'headers'>,
  forward: ForwardedCredentials,
  ctx: { remoteAddr: string; encrypted: boolean; behindProxy: boolean; upgrade: boolean },
): string[] {
  const dropped = connectionTokens(req.headers.connection);
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || dropped.has(lower) || lower === 'authorization' || lower === 'cookie' || lower === 'expect') continue;
    if (FORWARDING.has(lower) && (!ctx.behindProxy || lower.startsWith('x-forwarded-'))) continue;
    out.push(name, raw[i + 1]!);
  }
  if (forward.authorization) out.push('Authorization', forward.authorization);
  if (forward.cookie) out.push('Cookie', forward.cookie);
  const prior = (name: string): string | undefined => {
    const v = req.headers[name];
    return Array.isArray(v) ? v.join(', ') : v;
  };
  const host = req.headers.host ?? '';
  const xff = ctx.behindProxy && prior('x-forwarded-for') ? `${prior('x-forwarded-for')}, ${ctx.remoteAddr}` : ctx.remoteAddr;
  const proto = (ctx.behindProxy ? prior('x-forwarded-proto') : undefined) ?? (ctx.encrypted ? 'https' : 'http');
  const xfh = ctx.behindProxy ? (prior('x-forwarded-host') ?? host) : host;
  out.push('X-Forwarded-For', xff, 'X-Forwarded-Proto', proto, 'X-Forwarded-Host', xfh);
  if (ctx.upgrade) out.push('Connection', 'Upgrade', 'Upgrade', String(req.headers.upgrade ?? ''));
  return out;
}

/** Response headers for the client: hop-by-hop ones dropped, and no device may set the broker's session cookie. */
export function downstreamHeaders(raw: readonly string[], connection: string | string[] | undefined): string[] {
  const dropped = connectionTokens(connection);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || dropped.has(lower)) continue;
    if (lower === 'set-cookie' && setsCookie(raw[i + 1]!, SESSION_COOKIE)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

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

export function createDeviceProxy(options: DeviceProxyOptions): DeviceProxy {
  const { authorizer, logger, clock, presence } = options;
  const agent = new UpstreamPool(presence);
  const relays = new Set<Socket | Duplex>();
  const metrics = options.metrics;
  // Bound once: the relayed outcome is counted per request.
  const relayedCount = metrics?.proxyRequests.labels({ outcome: 'relayed' });
  const count = (outcome: string): void => metrics?.proxyRequests.inc({ outcome });

  function sendPage(res: ServerResponse, page: Page, extra: Record<string, string> = {}, status = page.status): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = Buffer.from(page.html);
    const errorHeader: Record<string, string> = page.code === 'LOGGED_OUT' ? {} : { 'x-certunnel-error': page.code };
    res.writeHead(status, { ...PAGE_HEADERS, ...errorHeader, ...extra, 'content-length': String(body.length) });
    res.end(body);
  }

  function refusal(decision: Extract<ProxyDecision, { allow: false }>, deviceName: string, req: IncomingMessage): { page: Page; extra: Record<string, string> } {
    if (decision.code === 'UNAUTHENTICATED') {
      const page = loginPage({ device: deviceName, next: req.url ?? '/', crossSite: req.headers['sec-fetch-site'] === 'cross-site', error: req.headers.cookie?.includes(`${SESSION_COOKIE}=`) || req.headers.authorization ? decision.message : undefined });
      return { page, extra: { 'www-authenticate': 'Bearer realm="certunnel"' } };
    }
    const page = refusalPage({
      code: decision.code, device: deviceName, message: decision.message, offlineSince: decision.offlineSince,
      revokedAt: decision.device?.revokedAt ?? null, retryAfterSeconds: decision.retryAfterSeconds, now: clock(),
    }, ERROR_STATUS[decision.code]);
    return { page, extra: decision.retryAfterSeconds ? { 'retry-after': String(decision.retryAfterSeconds) } : {} };
  }

  async function login(req: IncomingMessage, res: ServerResponse, deviceName: string, host: string): Promise<void> {
    if (req.method === 'GET' || req.method === 'HEAD') {
      const next = new URL(req.url ?? '/', 'http://x').searchParams.get('next') ?? '/';
      sendPage(res, loginPage({ device: deviceName, next }), {}, 200);
      return;
    }
    if (req.method !== 'POST') {
      sendPage(res, loginPage({ device: deviceName, next: '/' }), { allow: 'GET, POST' }, 405);
      return;
    }
    // Login CSRF: only a form of this very origin may post here.
    const origin = req.headers.origin;
    const site = req.headers['sec-fetch-site'];
    if ((origin && origin !== 'null' && hostOf(new URL(origin, 'http://invalid').host) !== host) || (site && site !== 'same-origin' && site !== 'none')) {
      metrics?.proxyLogins.inc({ outcome: 'CROSS_SITE' });
      sendPage(res, refusalPage({ code: 'FORBIDDEN', device: deviceName, message: 'cross-site login refused', now: clock() }, 403));
      return;
    }
    const form = new URLSearchParams(await readSmallBody(req, LOGIN_BODY_LIMIT));
    const next = safeNext(form.get('next') ?? '/');
    const client = clientOf(req, options.behindProxy);
    try {
      const result = await authorizer.login({ deviceName, host, remoteAddr: client }, (form.get('apiKey') ?? '').trim(), options.sessionMinutes);
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

  async function onRequest(req: IncomingMessage, res: ServerResponse, deviceName: string, attempt = 0): Promise<void> {
    const host = hostOf(req.headers.host) ?? '';
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (attempt === 0 && path.startsWith(RESERVED_PREFIX)) {
      if (path === LOGIN_PATH) return login(req, res, deviceName, host);
      if (path === LOGOUT_PATH) return sendPage(res, loggedOutPage(deviceName), { 'set-cookie': clearSessionCookieHeader() });
      return sendPage(res, refusalPage({ code: 'NOT_FOUND', device: deviceName, message: `${RESERVED_PREFIX} is reserved for the broker`, now: clock() }, 404));
    }
    const decision = await authorizer.decide({ deviceName, host, authorization: req.headers.authorization, cookie: req.headers.cookie, remoteAddr: clientOf(req, options.behindProxy), connection: req.socket });
    if (!decision.allow) {
      count(decision.code);
      const { page, extra } = refusal(decision, deviceName, req);
      return sendPage(res, page, extra);
    }
    relay(req, res, decision, deviceName, attempt);
  }

  function relay(req: IncomingMessage, res: ServerResponse, decision: Extract<ProxyDecision, { allow: true }>, deviceName: string, attempt: number): void {
    const headers = upstreamHeaders(req, decision.forward, {
      remoteAddr: remoteAddressOf(req), encrypted: Boolean((req.socket as TLSSocket).encrypted), behindProxy: options.behindProxy, upgrade: false,
    });
    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    let responded = false;
    const started = metrics ? performance.now() : 0;
    const upstream: ClientRequest = httpRequest({
      host: TUNNEL_HOST, port: decision.port, method: req.method, path: req.url, headers, agent: agent as unknown as Agent, setHost: false,
      certunnelDevice: decision.device.id, certunnelOrigin: { address: remoteAddressOf(req), port: req.socket.remotePort ?? 0 },
    } as RequestOptions);
    upstream.on('response', (ures) => {
      responded = true;
      if (metrics) {
        relayedCount!.inc();
        metrics.proxyUpstreamSeconds.observe((performance.now() - started) / 1000);
      }
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, downstreamHeaders(ures.rawHeaders, ures.headers.connection));
      // By hand, not pipe() or pipeline(): their per-response listeners (and pipeline's AbortController)
      // were a few percent of the proxy's CPU with small responses (V8 profile of bench:proxy).
      ures.on('data', (chunk: Buffer) => {
        if (!res.write(chunk)) {
          ures.pause();
          res.once('drain', () => ures.resume());
        }
      });
      ures.once('end', () => res.end());
      ures.once('aborted', () => res.destroy());
      ures.once('error', () => res.destroy());
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (responded || res.headersSent) {
        res.destroy();
        return;
      }
      // A kept-alive connection the device closed just as we reused it: try once more on a fresh one.
      if (upstream.reusedSocket && !hasBody && attempt === 0 && (req.method === 'GET' || req.method === 'HEAD') && err.code === 'ECONNRESET') {
        void onRequest(req, res, deviceName, 1).catch((e: unknown) => fail(res, e));
        return;
      }
      const offline = err.code === 'ECONNREFUSED';
      count(offline ? 'DEVICE_OFFLINE' : 'DEVICE_SERVICE_UNAVAILABLE');
      logger.info({ device: deviceName, port: decision.port, err: err.code ?? err.message }, 'proxy: upstream failed');
      if (!offline) {
        sendPage(res, refusalPage({ code: 'DEVICE_SERVICE_UNAVAILABLE', device: deviceName, message: `${deviceName} did not answer on its http slot`, now: clock() }, 502));
        return;
      }
      void authorizer.offlineSince(decision.device).then(
        (since) => sendPage(res, refusalPage({ code: 'DEVICE_OFFLINE', device: deviceName, message: 'offline', offlineSince: since, now: clock() }, 502)),
        (e: unknown) => fail(res, e),
      );
    });
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    if (hasBody) {
      req.pipe(upstream);
      req.once('error', () => upstream.destroy());
    } else {
      upstream.end();
    }
  }

  function fail(res: ServerResponse, err: unknown): void {
    logger.error({ err }, 'proxy: request failed');
    const code: ErrorCode = err instanceof BrokerError ? err.code : 'INTERNAL';
    count(code);
    sendPage(res, refusalPage({ code, device: '', message: err instanceof BrokerError && err.status < 500 ? err.message : 'internal error', now: clock() }, ERROR_STATUS[code]));
  }

  function rawResponse(socket: Duplex, page: Page, extra: Record<string, string> = {}): void {
    const body = Buffer.from(page.html);
    const head = [`HTTP/1.1 ${page.status} ${STATUS_CODES[page.status] ?? 'Refused'}`];
    for (const [k, v] of Object.entries({ ...PAGE_HEADERS, 'x-certunnel-error': page.code, ...extra, 'content-length': String(body.length), connection: 'close' })) head.push(`${k}: ${v}`);
    socket.end(Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`), body]));
  }

  async function onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, deviceName: string): Promise<void> {
    // Nothing may be read (and lost) before the upstream pipe exists.
    socket.pause();
    socket.on('error', () => socket.destroy());
    const host = hostOf(req.headers.host) ?? '';
    const decision = await authorizer.decide({ deviceName, host, authorization: req.headers.authorization, cookie: req.headers.cookie, remoteAddr: clientOf(req, options.behindProxy) });
    if (!decision.allow) {
      count(decision.code);
      const { page, extra } = refusal(decision, deviceName, req);
      rawResponse(socket, page, extra);
      return;
    }
    const headers = upstreamHeaders(req, decision.forward, {
      remoteAddr: remoteAddressOf(req), encrypted: Boolean((req.socket as TLSSocket).encrypted), behindProxy: options.behindProxy, upgrade: true,
    });
    let upstream: Duplex;
    try {
      upstream = await openUpstream(presence, decision.device.id, decision.port, { address: remoteAddressOf(req), port: req.socket.remotePort ?? 0 });
    } catch (err) {
      const code: ErrorCode = (err as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? 'DEVICE_OFFLINE' : 'DEVICE_SERVICE_UNAVAILABLE';
      count(code);
      const since = code === 'DEVICE_OFFLINE' ? await authorizer.offlineSince(decision.device) : null;
      rawResponse(socket, refusalPage({ code, device: deviceName, message: `${deviceName} did not answer on its http slot`, offlineSince: since, now: clock() }, 502));
      return;
    }
    relays.add(socket);
    relays.add(upstream);
    count('upgraded');
    metrics?.proxyWebsockets.inc();
    let open = true;
    const forget = (): void => {
      if (open) metrics?.proxyWebsockets.dec();
      open = false;
      relays.delete(socket);
      relays.delete(upstream);
      socket.destroy();
      upstream.destroy();
    };
    upstream.on('error', forget);
    upstream.once('close', forget);
    socket.once('close', forget);
    let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
    upstream.write(`${text}\r\n`);
    if (head.length) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  }

  return {
    handleRequest(req, res, deviceName) {
      onRequest(req, res, deviceName).catch((err: unknown) => fail(res, err));
    },
    handleUpgrade(req, socket, head, deviceName) {
      onUpgrade(req, socket, head, deviceName).catch((err: unknown) => {
        logger.error({ err }, 'proxy: upgrade failed');
        socket.destroy();
      });
    },
    close() {
      agent.destroy();
      for (const s of relays) s.destroy();
      relays.clear();
    },
  };
}
