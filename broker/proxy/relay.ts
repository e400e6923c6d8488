/**
 * Relaying one authorized request to the device's http slot and its
 * response back: bodies stream both ways with backpressure, upstream
 * connections come from the kept-alive pool (each one an SSH channel to the
 * device, worth reusing), and a tunnel that refuses or fails becomes the
 * offline / unavailable page. The device's response is hostile input: one
 * that node would throw on, that its parser refuses, or that never ends
 * its 1xx answers becomes the DEVICE_RESPONSE_INVALID page, and the
 * connection it came on is dropped, never pooled again.
 */
import { request as httpRequest, type Agent, type ClientRequest, type IncomingMessage, type RequestOptions, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { TUNNEL_HOST } from '../../api/index.js';
import { sendFailure, sendPage } from './answers.js';
import { downstreamHeaders, responseHeadProblem, upstreamHeaders } from './forwarded-headers.js';
import { refusalPage } from './pages.js';
import type { ProxyDecision } from './proxy-auth.js';
import { encryptedOf, peerOf, type ProxyContext } from './proxy-context.js';
import type { UpstreamPool } from './upstream-pool.js';

export type Allowed = Extract<ProxyDecision, { allow: true }>;

/** Relays REQ as DECISION allows; ATTEMPT 0 is the first try. */
export type Relay = (req: IncomingMessage, res: ServerResponse, decision: Allowed, deviceName: string, attempt: number) => void;

/**
 * 1xx answers relayed to nobody before the final response (node reads and
 * drops them): 100 Continue, 103 Early Hints, now and then 102 Processing
 * are a handful; a device sending them without end would hold the request
 * open forever.
 */
const MAX_INFORMATIONAL = 32;

/** Calls TOO_MANY once UPSTREAM has had more than MAX_INFORMATIONAL 1xx answers. */
export function capInformational(upstream: ClientRequest, tooMany: () => void): void {
  let informational = 0;
  upstream.on('information', () => {
    if (++informational === MAX_INFORMATIONAL + 1) tooMany();
  });
}

/** An error of node's HTTP parser (llhttp's HPE_* codes): the device's bytes are not a valid HTTP response. */
export function isParseError(err: NodeJS.ErrnoException): boolean {
  return err.code?.startsWith('HPE_') === true;
}

/** The device's response to the client, as it arrives (its head checked with responseHeadProblem first). */
function relayResponse(ures: IncomingMessage, res: ServerResponse): void {
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
}

/**
 * A relay over POOL. RETRY starts the request over (authorized again) on a
 * fresh connection, for a kept-alive one the device closed just as it was
 * reused.
 */
export function createRelay(ctx: ProxyContext, pool: UpstreamPool, retry: (req: IncomingMessage, res: ServerResponse, deviceName: string) => void): Relay {
  const { authorizer, logger, clock, metrics } = ctx;
  // Bound once: the relayed outcome is counted per request.
  const relayedCount = metrics?.proxyRequests.labels({ outcome: 'relayed' });

  /** The device's answer is not relayed: the connection is dropped, the operator gets DEVICE_RESPONSE_INVALID. */
  function responseInvalid(upstream: ClientRequest, res: ServerResponse, decision: Allowed, deviceName: string, reason: string): void {
    upstream.destroy();
    ctx.deviceResponseInvalid(decision.device, reason);
    sendPage(res, refusalPage({ code: 'DEVICE_RESPONSE_INVALID', device: deviceName, message: `${deviceName} answered with a response the broker does not relay`, now: clock() }, 502));
  }

  function upstreamFailed(err: NodeJS.ErrnoException, res: ServerResponse, decision: Allowed, deviceName: string): void {
    const offline = err.code === 'ECONNREFUSED';
    ctx.count(offline ? 'DEVICE_OFFLINE' : 'DEVICE_SERVICE_UNAVAILABLE');
    logger.info({ device: deviceName, port: decision.port, err: err.code ?? err.message }, 'proxy: upstream failed');
    if (!offline) {
      sendPage(res, refusalPage({ code: 'DEVICE_SERVICE_UNAVAILABLE', device: deviceName, message: `${deviceName} did not answer on its http slot`, now: clock() }, 502));
      return;
    }
    void authorizer.offlineSince(decision.device).then(
      (since) => sendPage(res, refusalPage({ code: 'DEVICE_OFFLINE', device: deviceName, message: 'offline', offlineSince: since, now: clock() }, 502)),
      (e: unknown) => sendFailure(ctx, res, e),
    );
  }

  return (req, res, decision, deviceName, attempt) => {
    const te = req.headers['transfer-encoding'];
    // Transfer-Encoding is hop-by-hop: node de-chunks the body and the relay re-frames it. Any coding
    // but chunked alone would be lost on the way (RFC 9112 section 6.1), so such a request is refused.
    if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
      ctx.count('REQUEST_FRAMING_REFUSED');
      sendPage(res, refusalPage({ code: 'REQUEST_FRAMING_REFUSED', device: deviceName, message: 'only Transfer-Encoding: chunked is relayed', now: clock() }, 400));
      return;
    }
    const headers = upstreamHeaders(req, decision.forward, { remoteAddr: peerOf(req), encrypted: encryptedOf(req), behindProxy: ctx.behindProxy, upgrade: false });
    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : te !== undefined;
    // A chunked body is re-framed as chunked, explicitly: node's client would otherwise write a GET's
    // body without framing, and the device would read it as a second request the broker never saw.
    if (te !== undefined) headers.push('Transfer-Encoding', 'chunked');
    let responded = false;
    const started = metrics ? performance.now() : 0;
    const upstream: ClientRequest = httpRequest({
      host: TUNNEL_HOST, port: decision.port, method: req.method, path: req.url, headers, agent: pool as unknown as Agent, setHost: false,
      certunnelDevice: decision.device.id, certunnelOrigin: { address: peerOf(req), port: req.socket.remotePort ?? 0 },
    } as RequestOptions);
    upstream.on('response', (ures) => {
      responded = true;
      const problem = responseHeadProblem(ures.statusCode, ures.statusMessage, ures.rawHeaders);
      if (problem !== null) {
        responseInvalid(upstream, res, decision, deviceName, problem);
        return;
      }
      if (metrics) {
        relayedCount!.inc();
        metrics.proxyUpstreamSeconds.observe((performance.now() - started) / 1000);
      }
      relayResponse(ures, res);
    });
    capInformational(upstream, () => responseInvalid(upstream, res, decision, deviceName, 'too many 1xx responses'));
    // A 101 the request did not ask for: without this listener node drops the socket and the request is never answered.
    upstream.on('upgrade', (_ures: IncomingMessage, socket: Duplex) => {
      responded = true;
      socket.destroy();
      responseInvalid(upstream, res, decision, deviceName, 'status 101 without an upgrade request');
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      // Once the client's answer is complete (the device answered before the request body ended, say), a later failure is moot.
      if (responded || res.headersSent) {
        if (!res.writableEnded) res.destroy();
        return;
      }
      if (isParseError(err)) {
        responseInvalid(upstream, res, decision, deviceName, err.code!);
        return;
      }
      // A kept-alive connection the device closed just as we reused it: try once more on a fresh one.
      if (upstream.reusedSocket && !hasBody && attempt === 0 && (req.method === 'GET' || req.method === 'HEAD') && err.code === 'ECONNRESET') {
        retry(req, res, deviceName);
        return;
      }
      upstreamFailed(err, res, decision, deviceName);
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
  };
}
