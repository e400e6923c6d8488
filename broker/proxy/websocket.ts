/**
 * WebSocket (any Upgrade) requests on a device hostname: authorized like
 * any request, then the handshake goes to the device's http slot through
 * node's HTTP client, which parses the device's answer. Only a 101 turns
 * the two sockets into a raw two-way pipe; any other answer is relayed as
 * a response and both connections close, so that nothing the client writes
 * after a refused upgrade reaches the device as a request the broker never
 * saw. A refusal is a whole HTTP response written on the socket, since an
 * upgrade request has no ServerResponse.
 */
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Actor } from '../core/deps.js';
import type { ErrorCode } from '../core/errors.js';
import { rawResponseHead, refusalAnswer, sendRawPage } from './answers.js';
import { downstreamHeaders, responseHeadProblem, upstreamHeaders } from './forwarded-headers.js';
import { hostOf } from './hostname.js';
import { refusalPage } from './pages.js';
import type { ProxyDecision } from './proxy-auth.js';
import { capInformational, isParseError } from './relay.js';
import { crossOriginRefusal } from './origin.js';
import { clientOf, encryptedOf, ownOriginOf, peerOf, type ProxyContext } from './proxy-context.js';
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

type Allowed = Extract<ProxyDecision, { allow: true }>;

/** One upgrade under way: the client's socket, the tunnel to the device, and how to give up on both. */
interface Handshake {
  readonly ctx: ProxyContext;
  readonly socket: Duplex;
  readonly tunnel: Duplex;
  readonly decision: Allowed;
  readonly deviceName: string;
  /** Whether the client has had (the start of) an answer. */
  answered: boolean;
}

/** The device's answer is not relayed: both connections dropped, the client gets DEVICE_RESPONSE_INVALID. */
function answerInvalid(h: Handshake, reason: string): void {
  if (h.answered) return void h.socket.destroy();
  h.answered = true;
  h.tunnel.destroy();
  h.ctx.deviceResponseInvalid(h.decision.device, reason);
  sendRawPage(h.socket, refusalPage({ code: 'DEVICE_RESPONSE_INVALID', device: h.deviceName, message: `${h.deviceName} answered with a response the broker does not relay`, now: h.ctx.clock() }, 502));
}

/** The device switched protocols: its 101 (checked, hop-by-hop dropped, no broker cookie) to the client, then a raw pipe. */
function switchProtocols(h: Handshake, relays: Set<Duplex>, ures: IncomingMessage, deviceHead: Buffer, clientHead: Buffer): void {
  const problem = responseHeadProblem(ures.statusCode, ures.statusMessage, ures.rawHeaders, true);
  if (problem !== null) return answerInvalid(h, problem);
  h.answered = true;
  const headers = [...downstreamHeaders(ures.rawHeaders, ures.headers.connection), 'Connection', 'Upgrade', 'Upgrade', String(ures.headers.upgrade ?? '')];
  h.socket.write(rawResponseHead(101, ures.statusMessage ?? '', headers));
  if (deviceHead.length) h.socket.write(deviceHead);
  // The client's bytes after its request (its first frames) are for the new protocol only.
  if (clientHead.length) h.tunnel.write(clientHead);
  track(h.ctx, relays, h.socket, h.tunnel, h.decision.actor);
  h.tunnel.pipe(h.socket);
  h.socket.pipe(h.tunnel);
}

/** The device refused the upgrade: its response (checked) to the client, then both connections close. */
function relayRefusal(h: Handshake, ures: IncomingMessage): void {
  const problem = responseHeadProblem(ures.statusCode, ures.statusMessage, ures.rawHeaders);
  if (problem !== null) return answerInvalid(h, problem);
  h.answered = true;
  // Connection: close delimits the body (node hands it over de-chunked) and ends the exchange.
  h.socket.write(rawResponseHead(ures.statusCode!, ures.statusMessage ?? '', [...downstreamHeaders(ures.rawHeaders, ures.headers.connection), 'Connection', 'close']));
  ures.pipe(h.socket);
  // Whatever the client still sends is read and dropped, never relayed: a paused socket would not see its close.
  h.socket.resume();
  ures.once('end', () => h.tunnel.destroy());
  ures.once('error', () => h.socket.destroy());
}

/** The handshake to the device through node's HTTP client (which parses its answer) over TUNNEL. */
function sendHandshake(h: Handshake, relays: Set<Duplex>, req: IncomingMessage, headers: readonly string[], clientHead: Buffer): ClientRequest {
  const upstream = httpRequest({ createConnection: () => h.tunnel as never, method: req.method, path: req.url, headers: headers as string[], setHost: false });
  upstream.on('upgrade', (ures: IncomingMessage, _tunnel: Duplex, deviceHead: Buffer) => switchProtocols(h, relays, ures, deviceHead, clientHead));
  upstream.on('response', (ures) => relayRefusal(h, ures));
  capInformational(upstream, () => answerInvalid(h, 'too many 1xx responses'));
  upstream.on('error', (err: NodeJS.ErrnoException) => {
    if (isParseError(err)) return answerInvalid(h, err.code!);
    if (h.answered) return void h.socket.destroy();
    h.answered = true;
    h.ctx.count('DEVICE_SERVICE_UNAVAILABLE');
    sendRawPage(h.socket, refusalPage({ code: 'DEVICE_SERVICE_UNAVAILABLE', device: h.deviceName, message: `${h.deviceName} did not answer on its http slot`, now: h.ctx.clock() }, 502));
  });
  upstream.end();
  return upstream;
}

/** An Upgrade request for DEVICENAME on SOCKET: refused on the socket, or relayed to the device's http slot. */
export async function relayUpgrade(ctx: ProxyContext, relays: Set<Duplex>, req: IncomingMessage, socket: Duplex, head: Buffer, deviceName: string): Promise<void> {
  const { authorizer, clock } = ctx;
  // Nothing may be read (and lost) before the upstream pipe exists.
  socket.pause();
  socket.on('error', () => socket.destroy());
  const crossOrigin = crossOriginRefusal({ method: req.method, headers: req.headers, own: ownOriginOf(req, ctx), upgrade: true });
  if (crossOrigin) {
    ctx.count('CROSS_ORIGIN_REFUSED');
    return sendRawPage(socket, refusalPage({ code: 'CROSS_ORIGIN_REFUSED', device: deviceName, message: crossOrigin, now: clock() }, 403));
  }
  const host = hostOf(req.headers.host) ?? '';
  const decision = await authorizer.decide({ deviceName, host, authorization: req.headers.authorization, cookie: req.headers.cookie, remoteAddr: clientOf(req, ctx) });
  if (!decision.allow) {
    ctx.count(decision.code);
    const { page, extra } = refusalAnswer(decision, deviceName, req, clock());
    sendRawPage(socket, page, extra);
    return;
  }
  const headers = upstreamHeaders(req, decision.forward, { remoteAddr: peerOf(req), encrypted: encryptedOf(req), behindProxy: ctx.behindProxy, upgrade: true });
  let tunnel: Duplex;
  try {
    tunnel = await openUpstream(ctx.presence, decision.device.id, decision.port, { address: peerOf(req), port: req.socket.remotePort ?? 0 });
  } catch (err) {
    const code: ErrorCode = (err as NodeJS.ErrnoException).code === 'ECONNREFUSED' ? 'DEVICE_OFFLINE' : 'DEVICE_SERVICE_UNAVAILABLE';
    ctx.count(code);
    const since = code === 'DEVICE_OFFLINE' ? await authorizer.offlineSince(decision.device) : undefined;
    sendRawPage(socket, refusalPage({ code, device: deviceName, message: `${deviceName} did not answer on its http slot`, offlineSince: since, now: clock() }, 502));
    return;
  }
  const h: Handshake = { ctx, socket, tunnel, decision, deviceName, answered: false };
  // A client gone before the device answered takes the tunnel with it (track() takes over after a 101).
  socket.once('close', () => tunnel.destroy());
  sendHandshake(h, relays, req, headers, head);
}
