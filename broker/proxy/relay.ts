/**
 * Relaying one authorized request to the device's http slot and its
 * response back: bodies stream both ways with backpressure, upstream
 * connections come from the kept-alive pool (each one an SSH channel to the
 * device, worth reusing), and a tunnel that refuses or fails becomes the
 * offline / unavailable page.
 */
import { request as httpRequest, type Agent, type ClientRequest, type IncomingMessage, type RequestOptions, type ServerResponse } from 'node:http';
import { TUNNEL_HOST } from '../../api/index.js';
import { sendFailure, sendPage } from './answers.js';
import { downstreamHeaders, upstreamHeaders } from './forwarded-headers.js';
import { refusalPage } from './pages.js';
import type { ProxyDecision } from './proxy-auth.js';
import { encryptedOf, peerOf, type ProxyContext } from './proxy-context.js';
import type { UpstreamPool } from './upstream-pool.js';

export type Allowed = Extract<ProxyDecision, { allow: true }>;

/** Relays REQ as DECISION allows; ATTEMPT 0 is the first try. */
export type Relay = (req: IncomingMessage, res: ServerResponse, decision: Allowed, deviceName: string, attempt: number) => void;

/** The device's response to the client, as it arrives. */
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
    const headers = upstreamHeaders(req, decision.forward, { remoteAddr: peerOf(req), encrypted: encryptedOf(req), behindProxy: ctx.behindProxy, upgrade: false });
    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    let responded = false;
    const started = metrics ? performance.now() : 0;
    const upstream: ClientRequest = httpRequest({
      host: TUNNEL_HOST, port: decision.port, method: req.method, path: req.url, headers, agent: pool as unknown as Agent, setHost: false,
      certunnelDevice: decision.device.id, certunnelOrigin: { address: peerOf(req), port: req.socket.remotePort ?? 0 },
    } as RequestOptions);
    upstream.on('response', (ures) => {
      responded = true;
      if (metrics) {
        relayedCount!.inc();
        metrics.proxyUpstreamSeconds.observe((performance.now() - started) / 1000);
      }
      relayResponse(ures, res);
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (responded || res.headersSent) {
        res.destroy();
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
