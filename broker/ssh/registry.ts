/**
 * Which sessions are live, which device each belongs to, and which session
 * holds each port: the state that takeover, revocation and presence read.
 * Ending a session forgets it here at once (so its ports can be bound
 * again and presence is right), then waits for its listeners to close.
 */
import type { Identity } from './authorize.js';
import type { GatewaySession } from './session.js';
import type { GatewayCounters } from './stats.js';
import type { AuditEvent, GatewayLogger, PresenceUpdate } from './types.js';

export function actorOf(identity: Identity): string {
  return identity.role === 'device' ? `device:${identity.deviceId}` : `operator:${identity.operator}`;
}

export interface RegistryDeps {
  readonly counters: GatewayCounters;
  readonly logger: GatewayLogger;
  audit(event: AuditEvent): void;
  presence(update: PresenceUpdate): void;
}

export class SessionRegistry {
  private readonly live = new Set<GatewaySession>();
  private readonly byDevice = new Map<string, Set<GatewaySession>>();
  /** Which session holds, or is binding, each port. */
  private readonly owners = new Map<number, GatewaySession>();

  constructor(private readonly deps: RegistryDeps) {}

  all(): GatewaySession[] {
    return [...this.live];
  }

  /** Live sessions of IDENTITY's device (any of its certificates), or of an operator's certificate (by serial). */
  sessionsOf(identity: Identity): number {
    if (identity.role === 'device') return this.byDevice.get(identity.deviceId)?.size ?? 0;
    let n = 0;
    for (const s of this.live) if (s.identity.role === 'operator' && s.identity.serial === identity.serial) n++;
    return n;
  }

  ofDevice(deviceId: string): GatewaySession[] {
    return [...(this.byDevice.get(deviceId) ?? [])];
  }

  /** A device is online while it has at least one session: a takeover never reports it offline. */
  add(session: GatewaySession): void {
    this.live.add(session);
    const { identity } = session;
    if (identity.role !== 'device') return;
    let set = this.byDevice.get(identity.deviceId);
    if (!set) this.byDevice.set(identity.deviceId, (set = new Set()));
    set.add(session);
    this.deps.presence({ deviceId: identity.deviceId, online: true, since: session.since, remoteAddr: session.remoteAddr });
  }

  owner(port: number): GatewaySession | undefined {
    return this.owners.get(port);
  }

  reserve(port: number, session: GatewaySession): void {
    this.owners.set(port, session);
  }

  /** Frees PORT if SESSION is the one holding it. */
  release(port: number, session: GatewaySession): void {
    if (this.owners.get(port) === session) this.owners.delete(port);
  }

  /**
   * Ends SESSION. REASON names the gateway's cause (REVOKED, EXPIRED,
   * TAKEOVER, KEEPALIVE_TIMEOUT, GATEWAY_CLOSED); undefined when the peer
   * went away. Idempotent; resolves when its ports are free.
   */
  end(session: GatewaySession, reason: string | undefined): Promise<void> {
    if (!this.live.delete(session)) return session.close();
    for (const [port, owner] of this.owners) if (owner === session) this.owners.delete(port);
    const { identity } = session;
    if (identity.role === 'device') {
      const set = this.byDevice.get(identity.deviceId);
      set?.delete(session);
      if (set?.size === 0) {
        this.byDevice.delete(identity.deviceId);
        this.deps.presence({ deviceId: identity.deviceId, online: false });
      }
    }
    const actor = actorOf(identity);
    const fields = { sessionId: session.id, actor, remoteAddr: session.remoteAddr, reason: reason ?? 'DISCONNECTED' };
    if (!reason) {
      this.deps.logger.info(fields, 'ssh session ended');
    } else {
      this.deps.counters.sessionClosed(reason);
      this.deps.logger.info(fields, 'ssh session closed by the gateway');
      if (reason !== 'GATEWAY_CLOSED') {
        this.deps.audit({
          actor: 'gateway', action: 'ssh.session.close', target: actor, remoteAddr: session.remoteAddr,
          outcome: 'closed', details: { reason, serial: identity.serial.toString() },
        });
      }
    }
    return session.close();
  }

  /** Gauges for stats(). */
  gauges(): { tunnelsConnected: number; operatorSessions: number; forwardsActive: number; relaysActive: number } {
    let devices = 0;
    let forwards = 0;
    let relays = 0;
    for (const session of this.live) {
      if (session.identity.role === 'device') devices += 1;
      forwards += session.forwards.size;
      for (const forward of session.forwards.values()) relays += forward.activeRelays;
    }
    return { tunnelsConnected: devices, operatorSessions: this.live.size - devices, forwardsActive: forwards, relaysActive: relays };
  }
}
