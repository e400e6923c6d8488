/**
 * WebSocket (any Upgrade) requests on a device hostname: authorized like
 * any request, then the handshake goes to the device's http slot and the
 * two sockets become a raw two-way pipe. A refusal is a whole HTTP response
 * written on the socket, since an upgrade request has no ServerResponse.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Actor } from '../core/deps.js';
import type { ErrorCode } from '../core/errors.js';
import { refusalAnswer, sendRawPage } from './answers.js';
import { upstreamHeaders } from './forwarded-headers.js';
import { hostOf } from './hostname.js';
import { refusalPage } from './pages.js';
import { clientOf, encryptedOf, peerOf, type ProxyContext } from './proxy-context.js';
import { openUpstream } from './upstream-pool.js';

/** Holds SOCKET and UPSTREAM in RELAYS (close() drops them) until either closes or ACTOR's key is revoked, then closes both. */
function track(ctx: ProxyContext, relays: Set<Duplex>, socket: Duplex, upstream: Duplex, actor: Actor): void {
  relays.add(socket);
  relays.add(upstream);
  ctx.count('upgraded');
  ctx.metrics?.proxyWebsockets.inc();
  let open = true;
  const forget = (): void => {
    if (open) ctx.metrics?.proxyWebsockets.dec();
    open = false;
    release();
    relays.delete(socket);
    relays.delete(upstream);
    socket.destroy();
    upstream.destroy();
  };
  const release = ctx.authorizer.holdForKey(actor, forget);
  upstream.on('error', forget);
  upstream.once('close', forget);
  socket.once('close', forget);
}

/** The request line and headers (and any bytes already read) again, for the device. */
function writeHandshake(upstream: Duplex, req: IncomingMessage, headers: readonly string[], head: Buffer): void {
  let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
  for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
  upstream.write(`${text}\r\n`);
  if (head.length) upstream.write(head);
}

/** An Upgrade request for DEVICENAME on SOCKET: refused on the socket, or relayed to the device's http slot. */
export async function relayUpgrade(ctx: ProxyContext, relays: Set<Duplex>, req: IncomingMessage, socket: Duplex, head: Buffer, deviceName: string): Promise<void> {
  const { authorizer, clock } = ctx;
  // Nothing may be read (and lost) before the upstream pipe exists.
  socket.pause();
  socket.on('error', () => socket.destroy());
  const host = hostOf(req.headers.host) ?? '';
  const decision = await authorizer.decide({ deviceName, host, authorization: req.headers.authorization, cookie: req.headers.cookie, remoteAddr: clientOf(req, ctx) });
  if (!decision.allow) {
    ctx.count(decision.code);
    const { page, extra } = refusalAnswer(decision, deviceName, req, clock());
    sendRawPage(socket, page, extra);
    return;
  }
  const headers = upstreamHeaders(req, decision.forward, { remoteAddr: peerOf(req), encrypted: encryptedOf(req), behindProxy: ctx.behindProxy, upgrade: true });
  let upstream: Duplex;
  try {
    upstream = await openUpstream(ctx.presence, decision.device.id, decision.port, { address: peerOf(req), port: req.socket.remotePort ?? 0 });
  } catch (err) {
    const code: ErrorCode = (err as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? 'DEVICE_OFFLINE' : 'DEVICE_SERVICE_UNAVAILABLE';
    ctx.count(code);
    const since = code === 'DEVICE_OFFLINE' ? await authorizer.offlineSince(decision.device) : null;
    sendRawPage(socket, refusalPage({ code, device: deviceName, message: `${deviceName} did not answer on its http slot`, offlineSince: since, now: clock() }, 502));
    return;
  }
  track(ctx, relays, socket, upstream, decision.actor);
  writeHandshake(upstream, req, headers, head);
  upstream.pipe(socket);
  socket.pipe(upstream);
}
