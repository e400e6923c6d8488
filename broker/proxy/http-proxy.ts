/**
 * The HTTP reverse proxy by hostname: `https://<device-name>.<domain>/…`
 * is relayed to the device's http slot, a port on the broker's loopback
 * that the device's tunnel holds. Node's http, no framework. This file
 * assembles the parts: the broker's own paths under /.certunnel/ (login.ts,
 * logout), the authorizer's decision (proxy-auth.ts), the relay of a request
 * (relay.ts, headers in forwarded-headers.ts) or of a WebSocket
 * (websocket.ts), and the pages when there is nothing to relay (answers.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { RESERVED_PREFIX } from '../../api/index.js';
import { refusalAnswer, sendFailure, sendPage } from './answers.js';
import { hostOf } from './hostname.js';
import { brokerLoginUrl, handleCallback, handleLogin, isNavigation, redirect } from './login.js';
import { crossOriginRefusal } from './origin.js';
import { CALLBACK_PATH, LOGIN_PATH, LOGOUT_PATH, loggedOutPage, refusalPage } from './pages.js';
import { clientOf, ownOriginOf, proxyContext, type DeviceProxyOptions, type ProxyContext } from './proxy-context.js';
import { serveSignIn } from './sign-in.js';
import { createRelay } from './relay.js';
import { clearSessionCookieHeader } from './session-cookie.js';
import { UpstreamPool } from './upstream-pool.js';
import { relayUpgrade } from './websocket.js';

export interface DeviceProxy {
  handleRequest(req: IncomingMessage, res: ServerResponse, deviceName: string): void;
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, deviceName: string): void;
  /** /.certunnel/* on the broker's own origin: where operators sign in (sign-in.ts). */
  handleSignIn(req: IncomingMessage, res: ServerResponse): void;
  /** Drops kept-alive upstream connections and open WebSocket relays. */
  close(): void;
}

/** The broker's own paths on a device hostname: login (to the broker), its callback, logout; anything else there is NOT_FOUND. */
function serveReserved(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, deviceName: string, host: string, path: string): Promise<void> | void {
  if (path === LOGIN_PATH) return handleLogin(ctx, req, res, deviceName);
  if (path === CALLBACK_PATH) return handleCallback(ctx, req, res, deviceName, host);
  if (path === LOGOUT_PATH) return sendPage(res, loggedOutPage(deviceName), { 'set-cookie': clearSessionCookieHeader() });
  return sendPage(res, refusalPage({ code: 'NOT_FOUND', device: deviceName, message: `${RESERVED_PREFIX} is reserved for the broker`, now: ctx.clock() }, 404));
}

export function createDeviceProxy(options: DeviceProxyOptions): DeviceProxy {
  const ctx = proxyContext(options);
  const pool = new UpstreamPool(ctx.presence);
  const relays = new Set<Duplex>();
  // The relay's one retry on a fresh connection: the request starts over as attempt 1, authorized again.
  const relay = createRelay(ctx, pool, (req, res, deviceName) => {
    void onRequest(req, res, deviceName, 1).catch((e: unknown) => sendFailure(ctx, res, e));
  });

  async function onRequest(req: IncomingMessage, res: ServerResponse, deviceName: string, attempt = 0): Promise<void> {
    const host = hostOf(req.headers.host) ?? '';
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (attempt === 0 && path.startsWith(RESERVED_PREFIX)) return serveReserved(ctx, req, res, deviceName, host, path);
    const crossOrigin = crossOriginRefusal({ method: req.method, headers: req.headers, own: ownOriginOf(req, ctx), upgrade: false });
    if (crossOrigin) {
      ctx.count('CROSS_ORIGIN_REFUSED');
      return sendPage(res, refusalPage({ code: 'CROSS_ORIGIN_REFUSED', device: deviceName, message: crossOrigin, now: ctx.clock() }, 403));
    }
    const decision = await ctx.authorizer.decide({ deviceName, host, authorization: req.headers.authorization, cookie: req.headers.cookie, remoteAddr: clientOf(req, ctx), connection: req.socket });
    if (!decision.allow) {
      ctx.count(decision.code);
      const signIn = decision.code === 'UNAUTHENTICATED' && isNavigation(req) ? brokerLoginUrl(ctx, req, deviceName, req.url ?? '/') : undefined;
      if (signIn) return redirect(res, signIn);
      const { page, extra } = refusalAnswer(decision, deviceName, req, ctx.clock());
      return sendPage(res, page, extra);
    }
    relay(req, res, decision, deviceName, attempt);
  }

  return {
    handleRequest(req, res, deviceName) {
      onRequest(req, res, deviceName).catch((err: unknown) => sendFailure(ctx, res, err));
    },
    handleSignIn(req, res) {
      serveSignIn(ctx, req, res).catch((err: unknown) => sendFailure(ctx, res, err));
    },
    handleUpgrade(req, socket, head, deviceName) {
      relayUpgrade(ctx, relays, req, socket, head, deviceName).catch((err: unknown) => {
        ctx.logger.error({ err }, 'proxy: upgrade failed');
        socket.destroy();
      });
    },
    close() {
      pool.destroy();
      for (const s of relays) s.destroy();
      relays.clear();
    },
  };
}
