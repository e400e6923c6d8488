/**
 * Sockets on the API port, before any request: anyone may connect, so one
 * source (IPv4 address, IPv6 /64) may hold only so many at once, and all
 * sources together only so many; beyond either, a new socket is closed at
 * once, before TLS or HTTP spend anything on it. The first refusal of a
 * run per source is logged, not each one of a flood.
 */
import type { Server, Socket } from 'node:net';
import { PerSourceCap } from '../core/rate-limit.js';
import type { Logger } from '../telemetry/logger.js';

export interface ConnectionLimits {
  /** Sockets per source; undefined: no per-source cap (behind a proxy, every peer is the proxy). */
  readonly perSource: number | undefined;
  /** Sockets in all (node's maxConnections). */
  readonly total: number;
}

export function limitConnections(server: Server, limits: ConnectionLimits, logger: Logger): void {
  server.maxConnections = limits.total;
  const max = limits.perSource;
  if (max === undefined) return;
  const cap = new PerSourceCap(max);
  server.on('connection', (socket: Socket) => {
    const addr = socket.remoteAddress;
    if (!addr) {
      socket.destroy(); // already gone
      return;
    }
    const decision = cap.acquire(addr);
    if (!decision.allowed) {
      if (decision.firstRefusal) logger.warn({ remoteAddr: addr, limit: max }, 'api connection refused: too many from this address');
      socket.destroy();
      return;
    }
    socket.once('close', () => cap.release(addr));
  });
}
