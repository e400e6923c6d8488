/**
 * Upstream connections of the HTTP proxy, kept alive and pooled per device
 * port: each one is an SSH channel through the device's tunnel (opened in
 * process with the embedded gateway, or a TCP connection to the tunnel port
 * that sshd holds in OpenSSH mode), worth reusing.
 *
 * It is the `agent` of node's http client, reduced to what the proxy needs:
 * node's http.Agent costs about 4% of the proxy's CPU per request (it copies
 * its options into a fresh dictionary object for every request; measured),
 * and all it would add here is per-host limits. The contract node's
 * ClientRequest expects of an agent: `addRequest(req, options)` hands a
 * socket to `req.onSocket()`; a kept-alive socket emits 'free' when its
 * response is done; `keepAlive` and `protocol` are read.
 */
import type { ClientRequest } from 'node:http';
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { TUNNEL_HOST } from '../../api/index.js';
import type { TunnelPresence } from '../core/presence.js';


/** Upstream request options carry the device, so that the pool can dial its tunnel. */
export interface TunnelRequestOptions {
  readonly port: number;
  readonly certunnelDevice: string;
  readonly certunnelOrigin: { address: string; port: number };
}

/** What node's http client calls on a socket, for a stream that is not one. */
function asSocket(stream: Duplex): Duplex {
  const same = function (this: Duplex): Duplex {
    return this;
  };
  return Object.assign(stream, {
    setKeepAlive: same, setNoDelay: same, ref: same, unref: same,
    setTimeout(this: Duplex & { timeout?: number }, ms: number) {
      this.timeout = ms;
      return this;
    },
  });
}

/** A stream into DEVICE's tunnel at PORT: an in-process channel when the gateway offers one, else TCP to 127.0.0.1:PORT. */
export function openUpstream(presence: TunnelPresence, deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex> {
  if (presence.dial) return presence.dial(deviceId, port, origin).then(asSocket);
  return new Promise((resolve, reject) => {
    const tcp = connect({ host: TUNNEL_HOST, port, noDelay: true });
    tcp.once('connect', () => {
      tcp.off('error', reject);
      resolve(tcp);
    });
    tcp.once('error', reject);
  });
}

export class UpstreamPool {
  /** Read by ClientRequest: send "Connection: keep-alive" and hand the socket back when done. */
  readonly keepAlive = true;
  readonly maxSockets = Infinity;
  readonly protocol = 'http:';
  readonly defaultPort = 80;
  private readonly idle = new Map<string, Duplex[]>();
  private readonly all = new Set<Duplex>();

  constructor(
    private readonly presence: TunnelPresence,
    /** Idle connections kept per device port. */
    private readonly maxIdle = 64,
  ) {}

  addRequest(req: ClientRequest, options: TunnelRequestOptions): void {
    const key = `${options.certunnelDevice}|${options.port}`;
    const idle = this.idle.get(key);
    while (idle?.length) {
      const socket = idle.pop()!;
      if (socket.destroyed) continue;
      // Tells the proxy that a failure may be a connection the device closed just now (worth one retry).
      req.reusedSocket = true;
      req.onSocket(socket as never);
      return;
    }
    openUpstream(this.presence, options.certunnelDevice, options.port, options.certunnelOrigin).then(
      (socket) => {
        this.install(socket, key);
        req.onSocket(socket as never);
      },
      // onSocket(socket, err) is how node's own Agent reports a failed connection (the request emits 'error').
      (err: Error) => (req as unknown as { onSocket(socket: undefined, err: Error): void }).onSocket(undefined, err),
    );
  }

  private install(socket: Duplex, key: string): void {
    this.all.add(socket);
    // While idle no request listens: an error then only ends the connection.
    socket.on('error', () => undefined);
    socket.on('free', () => {
      if (socket.destroyed) return;
      let idle = this.idle.get(key);
      if (!idle) this.idle.set(key, (idle = []));
      if (idle.length >= this.maxIdle) socket.destroy();
      else idle.push(socket);
    });
    socket.once('close', () => {
      this.all.delete(socket);
      const idle = this.idle.get(key);
      const i = idle ? idle.indexOf(socket) : -1;
      if (i >= 0) idle!.splice(i, 1);
      if (idle?.length === 0) this.idle.delete(key);
    });
  }

  destroy(): void {
    for (const socket of this.all) socket.destroy();
    this.all.clear();
    this.idle.clear();
  }
}
