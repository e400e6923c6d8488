/**
 * Operator access, assembled for the broker process: operator certificates
 * (SSH), the HTTP reverse proxy by hostname and its nginx auth_request
 * endpoint share one authorizer and one view of tunnel presence. The API
 * server hands device hostnames to the proxy and everything else to koa.
 */
import type { IncomingMessage, RequestListener } from 'node:http';
import type { Duplex } from 'node:stream';
import { trustsProxy } from '../core/config.js';
import type { Logger } from '../telemetry/logger.js';
import { deviceHostMatcher, type DeviceHostMatcher } from './hostname.js';
import { createDeviceProxy, type DeviceProxy } from './http-proxy.js';
import type { ProxyMetrics } from './proxy-context.js';
import type { TunnelPresence } from '../core/presence.js';
import { ProxyAuthorizer, type ProxyAuthDeps } from './proxy-auth.js';
import { LoginCodes } from './login-codes.js';
import { loadOrCreateSessionSecret } from './session-cookie.js';
import { RESERVED_PREFIX } from '../../api/index.js';

export { UNKNOWN_PRESENCE, type TunnelPresence } from '../core/presence.js';

export interface AccessOptions {
  /** The rules' state, without their hooks: the revocation hook calls this layer, so it is built after it. */
  readonly core: ProxyAuthDeps['core'];
  readonly logger: Logger;
  readonly presence: TunnelPresence;
  /** Where the session HMAC key lives (made on first start). */
  readonly sessionKeyPath: string;
  /** The broker's own hostnames: never taken for a device. */
  readonly reservedHosts: readonly string[];
  readonly metrics?: ProxyMetrics;
}

export interface AccessLayer {
  readonly authorizer: ProxyAuthorizer;
  readonly presence: TunnelPresence;
  readonly matchDevice: DeviceHostMatcher;
  /** Device hostnames to the proxy (when enabled), the rest to API. */
  requestListener(api: RequestListener): RequestListener;
  /** WebSocket upgrades for device hostnames; the API has none. */
  onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  deviceRevoked(deviceId: string): void;
  close(): void;
}

export async function createAccessLayer(o: AccessOptions): Promise<AccessLayer> {
  const { config } = o.core;
  const sessionSecret = await loadOrCreateSessionSecret(o.sessionKeyPath);
  const authorizer = new ProxyAuthorizer({ core: o.core, presence: o.presence, sessionSecret });
  const matchDevice = deviceHostMatcher(config.domain, o.reservedHosts);
  const proxy: DeviceProxy | undefined = config.proxy.enabled
    ? createDeviceProxy({
        authorizer, presence: o.presence, logger: o.logger.child({ component: 'http-proxy' }), clock: o.core.clock,
        behindProxy: trustsProxy(config.api), sessionMinutes: config.proxy.sessionMinutes, metrics: o.metrics,
        audit: (event) => o.core.store.appendAudit(event),
        codes: new LoginCodes(o.core.clock), domain: config.domain, publicUrl: config.api.publicUrl,
      })
    : undefined;
  return {
    authorizer,
    presence: o.presence,
    matchDevice,
    requestListener(api) {
      if (!proxy) return api;
      return (req, res) => {
        const device = matchDevice(req.headers.host);
        // The broker's own origin signs operators in (broker/proxy/sign-in.ts); the API has no such paths.
        if (device === undefined) return req.url?.startsWith(RESERVED_PREFIX) ? proxy.handleSignIn(req, res) : api(req, res);
        proxy.handleRequest(req, res, device);
      };
    },
    onUpgrade(req, socket, head) {
      const device = proxy ? matchDevice(req.headers.host) : undefined;
      if (!proxy || device === undefined) {
        socket.destroy();
        return;
      }
      proxy.handleUpgrade(req, socket, head, device);
    },
    deviceRevoked(deviceId) {
      authorizer.forgetDevice(deviceId);
    },
    close() {
      proxy?.close();
    },
  };
}
