/**
 * Counters the gateway keeps for metrics. Plain numbers mutated in place:
 * the metrics module (elsewhere) reads snapshots and turns them into
 * Prometheus counters and gauges; nothing here allocates per byte.
 */
import type { SignatureForm } from './userauth.js';

/** Bytes carried by device tunnels, seen from the broker. */
export interface ByteCounters {
  /** Received from devices over forwarded-tcpip channels (device → TCP clients at the broker). */
  in: number;
  /** Sent to devices (TCP clients at the broker → device). */
  out: number;
}

export type ConnectionRefusal = 'RATE_LIMITED' | 'TOO_MANY_UNAUTHENTICATED' | 'TOO_MANY_FROM_SOURCE' | 'GATEWAY_CLOSING';

export interface GatewayStats {
  /** TCP connections held, authenticated or not. */
  readonly connections: number;
  readonly unauthenticated: number;
  /** Authenticated device sessions. */
  readonly tunnelsConnected: number;
  readonly operatorSessions: number;
  /** Ports listening on 127.0.0.1 for devices. */
  readonly forwardsActive: number;
  /** TCP connections currently relayed through a device tunnel. */
  readonly relaysActive: number;
  readonly connectionsRefused: Readonly<Record<string, number>>;
  readonly authFailures: Readonly<Record<string, number>>;
  readonly forwardsRefused: Readonly<Record<string, number>>;
  readonly channelsRefused: Readonly<Record<string, number>>;
  /** Sessions the gateway ended, by reason (REVOKED, EXPIRED, TAKEOVER, KEEPALIVE_TIMEOUT, GATEWAY_CLOSED). */
  readonly sessionsClosed: Readonly<Record<string, number>>;
  /** How session signatures arrived from ssh2 (see userauth.ts unwrapSessionSignature). */
  readonly signatureForms: Readonly<Record<SignatureForm, number>>;
  /** Bytes received from devices through their tunnels (ByteCounters.in). */
  readonly bytesIn: number;
  /** Bytes sent to devices through their tunnels (ByteCounters.out). */
  readonly bytesOut: number;
}

type Tally = Record<string, number>;

function bump(tally: Tally, key: string): void {
  tally[key] = (tally[key] ?? 0) + 1;
}

export class GatewayCounters {
  readonly bytes: ByteCounters = { in: 0, out: 0 };
  private readonly connectionsRefused: Tally = Object.create(null) as Tally;
  private readonly authFailures: Tally = Object.create(null) as Tally;
  private readonly forwardsRefused: Tally = Object.create(null) as Tally;
  private readonly channelsRefused: Tally = Object.create(null) as Tally;
  private readonly sessionsClosed: Tally = Object.create(null) as Tally;
  private readonly signatureForms: Record<SignatureForm, number> = { wrapped: 0, bare: 0 };

  connectionRefused(reason: ConnectionRefusal): void {
    bump(this.connectionsRefused, reason);
  }

  authFailure(reason: string): void {
    bump(this.authFailures, reason);
  }

  forwardRefused(reason: string): void {
    bump(this.forwardsRefused, reason);
  }

  channelRefused(reason: string): void {
    bump(this.channelsRefused, reason);
  }

  sessionClosed(reason: string): void {
    bump(this.sessionsClosed, reason);
  }

  signature(form: SignatureForm): void {
    this.signatureForms[form] += 1;
  }

  snapshot(gauges: Pick<GatewayStats, 'connections' | 'unauthenticated' | 'tunnelsConnected' | 'operatorSessions' | 'forwardsActive' | 'relaysActive'>): GatewayStats {
    return {
      ...gauges,
      connectionsRefused: { ...this.connectionsRefused },
      authFailures: { ...this.authFailures },
      forwardsRefused: { ...this.forwardsRefused },
      channelsRefused: { ...this.channelsRefused },
      sessionsClosed: { ...this.sessionsClosed },
      signatureForms: { ...this.signatureForms },
      bytesIn: this.bytes.in,
      bytesOut: this.bytes.out,
    };
  }
}
