/**
 * What the HTTP proxy's parts (login, relay, WebSocket relay, answers)
 * share: the options the proxy was made with, the request counter, the
 * record of a device's invalid answers, and who a request comes from.
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { clientAddressFrom } from '../core/net-address.js';
import type { TunnelPresence } from '../core/presence.js';
import type { NewAuditEvent } from '../store/types.js';
import type { Logger } from '../telemetry/logger.js';
import type { BrokerMetrics } from '../telemetry/metrics.js';
import type { LoginCodes } from './login-codes.js';
import { requestOrigin, schemeOf, withHostname } from './origin.js';
import type { ProxyAuthorizer } from './proxy-auth.js';

export type ProxyMetrics = Pick<BrokerMetrics, 'proxyRequests' | 'proxyUpstreamSeconds' | 'proxyLogins' | 'proxyWebsockets'>;

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
  /** Writes an audit event (the store's appendAudit); failures to write are the store's to log. */
  readonly audit: (event: NewAuditEvent) => Promise<void>;
  /** The sign-in codes the broker's origin mints and device hostnames redeem. */
  readonly codes: LoginCodes;
  /** Device hostnames are <name>.<domain> (config domain). */
  readonly domain: string;
  /** api.publicUrl: where browsers reach the broker's own origin; unset, the host they addressed with the name <domain>. */
  readonly publicUrl?: string;
}

export interface ProxyContext extends DeviceProxyOptions {
  /** Counts one request's outcome (certunnel_proxy_requests_total): a refusal's code, `upgraded`, … */
  count(outcome: string): void;
  /**
   * DEVICE answered a relayed request with something the proxy will not
   * relay (REASON, the broker's own words, never the device's bytes):
   * counted and logged each time, audited once per device per window.
   */
  deviceResponseInvalid(device: { id: string; name: string | null }, reason: string): void;
}

/** One `proxy.device_response` audit event per device per window: a device answering badly cannot flood the audit trail. */
const DEVICE_FAULT_AUDIT_WINDOW_MS = 60_000;
/** Devices remembered for that window; past it the memory starts over (at worst one more event per device). */
const DEVICE_FAULT_MEMORY = 10_000;

export function proxyContext(options: DeviceProxyOptions): ProxyContext {
  const { metrics, logger, clock } = options;
  const count = (outcome: string): void => void metrics?.proxyRequests.inc({ outcome });
  const audited = new Map<string, number>();
  return {
    ...options,
    count,
    deviceResponseInvalid(device, reason) {
      count('DEVICE_RESPONSE_INVALID');
      logger.warn({ device: device.id, reason }, 'proxy: the device answered with a response that is not relayed');
      const now = clock();
      const last = audited.get(device.id);
      if (last !== undefined && now.getTime() - last < DEVICE_FAULT_AUDIT_WINDOW_MS) return;
      if (audited.size >= DEVICE_FAULT_MEMORY) audited.clear();
      audited.set(device.id, now.getTime());
      void options.audit({ at: now, actor: `device:${device.id}`, action: 'proxy.device_response', target: device.id, remoteAddr: null, outcome: 'DEVICE_RESPONSE_INVALID', details: { name: device.name, reason } }).catch(() => undefined);
    },
  };
}

/** The TCP peer's address ('' if the socket is gone), for the device's X-Forwarded-For and the tunnel's origin. */
export function peerOf(req: IncomingMessage): string {
  return req.socket.remoteAddress ?? '';
}

/** Whether the client reached the broker over TLS. */
export function encryptedOf(req: IncomingMessage): boolean {
  return Boolean((req.socket as TLSSocket).encrypted);
}

/** Who is asking, for the audit log and the failure limiter (clientAddressFrom). */
export function clientOf(req: IncomingMessage, ctx: Pick<DeviceProxyOptions, 'behindProxy'>): string | null {
  return clientAddressFrom(req.socket.remoteAddress, req.headers['x-forwarded-for'], ctx.behindProxy);
}

/** The origin REQ addressed (its scheme and Host header), undefined if its Host is unusable. */
export function ownOriginOf(req: IncomingMessage, ctx: Pick<DeviceProxyOptions, 'behindProxy'>): URL | undefined {
  return requestOrigin(schemeOf(req.headers, encryptedOf(req), ctx.behindProxy), req.headers.host);
}

/** How browsers reach this listener from outside: api.publicUrl when set, else the scheme and port REQ came with. */
function publicBaseOf(req: IncomingMessage, ctx: Pick<DeviceProxyOptions, 'behindProxy' | 'publicUrl'>): URL | undefined {
  return ctx.publicUrl ? new URL(ctx.publicUrl) : ownOriginOf(req, ctx);
}

/** The broker's own origin, where operators sign in: api.publicUrl's, else <domain> on the scheme and port REQ used. */
export function brokerOriginOf(req: IncomingMessage, ctx: Pick<DeviceProxyOptions, 'behindProxy' | 'publicUrl' | 'domain'>): string | undefined {
  if (ctx.publicUrl) return new URL(ctx.publicUrl).origin;
  const base = publicBaseOf(req, ctx);
  return base && withHostname(base, ctx.domain);
}

/** DEVICENAME's hostname as an origin, on the broker's public scheme and port. */
export function deviceOriginOf(req: IncomingMessage, ctx: Pick<DeviceProxyOptions, 'behindProxy' | 'publicUrl' | 'domain'>, deviceName: string): string | undefined {
  const base = publicBaseOf(req, ctx);
  return base && withHostname(base, `${deviceName}.${ctx.domain}`);
}
