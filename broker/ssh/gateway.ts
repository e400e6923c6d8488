/**
 * The embedded SSH gateway: an ssh2 Server that lets a device certificate
 * do one thing, a remote forward on 127.0.0.1:<its ports>, and an operator
 * certificate another, a direct-tcpip connection to a live device port.
 * This file is the assembly: the listener and the limits that apply before
 * ssh2 sees a byte, and the wiring of each connection's events to the
 * phases that handle them, each in its own module: handle-userauth.ts (user
 * authentication), handle-global-requests.ts (tcpip-forward and the takeover of
 * a held port), handle-channels.ts (direct-tcpip, every other channel refused).
 * Those translate ssh2 events into the pure decisions of authorize.ts and
 * userauth.ts; everything they do not recognise is refused.
 *
 * Accounting: every refusal (authentication, forward, channel) is logged,
 * counted in stats() and audited with a reason code; the peer only sees the
 * plain SSH failure. Two exceptions, both documented: "none" (the method
 * list probe every client sends first) is not an attempt, and connections
 * refused before any SSH byte (rate limit, per-source cap, random early drop) are counted
 * and logged once per run, not audited - there is no one to name yet.
 */
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { Connection } from 'ssh2';
import { encodePrivateKey, type PublicKey } from '../../ca/index.js';
import { ConnectionRateLimiter, PerSourceCap, shouldDropEarly, type EarlyDropPolicy } from '../core/rate-limit.js';
import { handleUserauth, refuseUserauth, type Authenticating, type AuthenticationDeps } from './handle-userauth.js';
import { authorizeReach, type ForwardRequest } from './authorize.js';
import { handleDirectTcpip, refuseChannel, type ChannelDeps } from './handle-channels.js';
import { coalesceWrites } from './coalesce.js';
import { handleGlobalRequest, type ForwardRequestDeps } from './handle-global-requests.js';
import { SessionRegistry, actorOf } from './registry.js';
import { GatewaySession } from './session.js';
import { installPaddingPool } from './ssh2-padding.js';
import { prepareHostIdentity, presentHostIdentity, type HostIdentity, type PreparedHostIdentity } from './host-identity.js';
import { GatewayCounters, type ConnectionRefusal, type GatewayStats } from './stats.js';
import { DEFAULT_LIMITS, type AuditEvent, type Gateway, type GatewayDeps, type GatewayLimits, type PresenceUpdate } from './types.js';

/** Per TCP connection, from accept to close. */
interface ConnState extends Authenticating {
  authTimer?: NodeJS.Timeout;
  session?: GatewaySession;
}

/** DEFAULT_LIMITS, overridden by whatever LIMITS sets (an undefined value keeps the default). */
function resolveLimits(limits: GatewayLimits | undefined): Required<GatewayLimits> {
  const out: Record<string, number> = { ...DEFAULT_LIMITS };
  for (const [name, value] of Object.entries(limits ?? {})) if (typeof value === 'number') out[name] = value;
  return out as Required<GatewayLimits>;
}

/** What the phases of a connection share: one object satisfies each phase's narrow deps. */
type PhaseDeps = AuthenticationDeps & ForwardRequestDeps & ChannelDeps;

export function createGateway(deps: GatewayDeps): Gateway {
  installPaddingPool();
  return new EmbeddedGateway(deps);
}

class EmbeddedGateway implements Gateway {
  private readonly limits: Required<GatewayLimits>;
  private readonly counters = new GatewayCounters();
  private readonly registry: SessionRegistry;
  private readonly phases: PhaseDeps;
  private readonly limiter: ConnectionRateLimiter;
  /** Unauthenticated connections per source (sshd PerSourceMaxStartups). */
  private readonly perSource: PerSourceCap;
  /** sshd MaxStartups start:rate:full over every source's unauthenticated connections. */
  private readonly earlyDrop: EarlyDropPolicy;
  /** Early drops since the last admission: the first of a run is logged. */
  private droppingEarly = false;
  private readonly sshServer: ssh2.Server;
  private readonly netServer: NetServer;
  private readonly states = new Set<ConnState>();
  /** Until ssh2 reports the connection (after the version exchange), by "address|port". */
  private readonly awaitingHeader = new Map<string, ConnState>();
  private unauthenticated = 0;
  private nextSessionId = 1;
  private closing = false;
  /** What a new connection is shown (host-identity.ts). */
  private presented: PreparedHostIdentity;

  constructor(private readonly deps: GatewayDeps) {
    const limits = (this.limits = resolveLimits(deps.limits));
    const { logger, clock } = deps;
    const audit = (event: AuditEvent): void => this.callSink('audit', () => deps.audit(event));
    const presence = (update: PresenceUpdate): void => this.callSink('presence', () => deps.presence?.(update));
    this.registry = new SessionRegistry({ counters: this.counters, logger, audit, presence });
    this.phases = {
      clock, logger, audit, counters: this.counters, registry: this.registry,
      certDeps: {
        // Read at every login: a user CA rotation changes the accepted CAs without a restart.
        get trustedCaKeys() {
          return deps.userCaKeys;
        },
        isRevoked: (c) => deps.isRevoked(c),
        ...(deps.portPool ? { pool: deps.portPool } : {}),
      },
      maxAuthAttempts: limits.maxAuthAttempts,
      sessionsOf: (identity) => this.registry.sessionsOf(identity),
      maxSessionsPerCertificate: limits.maxSessionsPerCertificate,
      resolveDevice: deps.resolveDevice,
      remoteReach: deps.remoteReach,
      lookupIssued: deps.lookupIssued,
    };
    this.limiter = new ConnectionRateLimiter({ ratePerSecond: limits.perIpRatePerSecond, burst: limits.perIpBurst });
    this.perSource = new PerSourceCap(limits.maxUnauthenticatedPerSource);
    const full = limits.maxUnauthenticated;
    this.earlyDrop = { start: Math.min(limits.earlyDropStart, full), rate: limits.earlyDropRate, full };
    // ssh2 is used for the protocol only: sockets come from our own listener
    // (injectSocket), so that limits apply before ssh2 allocates anything.
    this.presented = prepareHostIdentity({ hostKey: deps.hostKey, hostCertificate: deps.hostCertificate });
    this.sshServer = new ssh2.Server({
      hostKeys: [encodePrivateKey(deps.hostKey)],
      ident: 'certunnel',
      keepaliveInterval: limits.keepaliveIntervalMs,
      keepaliveCountMax: limits.keepaliveCountMax,
    });
    this.sshServer.on('connection', (conn, info) => this.onSshConnection(conn, info));
    this.netServer = createServer((socket) => this.onSocket(socket));
  }

  /** The audit and presence sinks are fire-and-forget: a failing one is logged, never the gateway's problem. */
  private callSink(name: 'audit' | 'presence', call: () => void): void {
    try {
      call();
    } catch (err) {
      this.deps.logger.error({ err }, `${name} sink failed`);
    }
  }

  private refuseConnection(socket: Socket, reason: ConnectionRefusal, remoteAddr: string, log: boolean): void {
    this.counters.connectionRefused(reason);
    if (log) this.deps.logger.warn({ reason, remoteAddr }, 'ssh connection refused');
    socket.destroy();
  }

  /** A TCP connection: the limits that apply before any SSH byte, then ssh2 gets the socket. */
  private onSocket(socket: Socket): void {
    socket.on('error', () => undefined);
    // SSH packets are small and latency-bound (a channel open, then its first data): Nagle
    // against the peer's delayed ACK costs 40 ms per new tunnelled connection (measured).
    socket.setNoDelay(true);
    coalesceWrites(socket);
    const remoteAddr = socket.remoteAddress;
    if (!remoteAddr) {
      socket.destroy();
      return;
    }
    if (this.closing) return this.refuseConnection(socket, 'GATEWAY_CLOSING', remoteAddr, false);
    const rate = this.limiter.take(remoteAddr);
    if (!rate.allowed) return this.refuseConnection(socket, 'RATE_LIMITED', remoteAddr, rate.firstRefusal);
    if (shouldDropEarly(this.unauthenticated, this.earlyDrop, this.deps.random)) {
      const first = !this.droppingEarly;
      this.droppingEarly = true;
      return this.refuseConnection(socket, 'TOO_MANY_UNAUTHENTICATED', remoteAddr, first);
    }
    const source = this.perSource.acquire(remoteAddr);
    if (!source.allowed) return this.refuseConnection(socket, 'TOO_MANY_FROM_SOURCE', remoteAddr, source.firstRefusal);
    this.droppingEarly = false;
    this.track({ socket, remoteAddr, failures: 0 });
    this.sshServer.injectSocket(socket);
  }

  /** Counts STATE as unauthenticated until its session starts or it closes, with a login grace timer. */
  private track(state: ConnState): void {
    const { socket } = state;
    this.states.add(state);
    this.unauthenticated += 1;
    const key = `${state.remoteAddr}|${socket.remotePort}`;
    this.awaitingHeader.set(key, state);
    state.authTimer = setTimeout(() => refuseUserauth(this.phases, state, 'AUTH_TIMEOUT', { drop: true }), this.limits.authTimeoutMs);
    state.authTimer.unref();
    socket.once('close', () => {
      this.awaitingHeader.delete(key);
      this.states.delete(state);
      if (!state.session) {
        clearTimeout(state.authTimer);
        this.leaveUnauthenticated(state);
      } else {
        void this.registry.end(state.session, undefined);
      }
    });
  }

  /** STATE authenticated or closed: its slot, global and per source, is free. */
  private leaveUnauthenticated(state: ConnState): void {
    this.unauthenticated -= 1;
    this.perSource.release(state.remoteAddr);
  }

  setHostIdentity(identity: HostIdentity): void {
    this.presented = prepareHostIdentity(identity);
  }

  private onSshConnection(conn: Connection, info: { ip: string; port: number }): void {
    // Before ssh2 sends its KEXINIT (it emits 'connection' first): this connection's host key for its life.
    presentHostIdentity(conn, this.presented);
    const key = `${info.ip}|${info.port}`;
    const state = this.awaitingHeader.get(key);
    this.awaitingHeader.delete(key);
    if (!state) {
      conn.end();
      return;
    }
    state.conn = conn;
    conn.on('error', (err: Error & { level?: string }) => {
      this.deps.logger.info({ remoteAddr: state.remoteAddr, err: err.message, level: err.level }, 'ssh connection error');
      // ssh2 gave up on keepalives and sent FIN, but a dead peer never
      // answers it: drop the session (and its ports) now, not after TCP's
      // retransmission timeout.
      if (err.level === 'client-timeout') {
        if (state.session) void this.registry.end(state.session, 'KEEPALIVE_TIMEOUT');
        else state.socket.destroy();
      }
    });
    conn.on('authentication', (ctx) => handleUserauth(this.phases, state, ctx));
    conn.on('ready', () => this.onReady(state, conn));
  }

  /** Authenticated: the session starts, and its requests and channels go to their phases. */
  private onReady(state: ConnState, conn: Connection): void {
    const { identity } = state;
    if (!identity || this.closing || state.socket.destroyed) {
      conn.end();
      return;
    }
    clearTimeout(state.authTimer);
    this.leaveUnauthenticated(state);
    const { clock, logger } = this.deps;
    const session = new GatewaySession(this.nextSessionId++, identity, conn, state.socket, state.remoteAddr, clock());
    state.session = session;
    this.registry.add(session);
    logger.info(
      { sessionId: session.id, actor: actorOf(identity), serial: identity.serial.toString(), remoteAddr: state.remoteAddr },
      'ssh session authenticated',
    );
    session.armExpiry(clock, () => void this.registry.end(session, 'EXPIRED'));
    const phases = this.phases;
    conn.on('request', (accept: ((port?: number) => void) | undefined, reject: (() => void) | undefined, name: string, info: unknown) =>
      handleGlobalRequest(phases, session, name, info as ForwardRequest, { accept, reject }).catch((err: unknown) => {
        logger.error({ err, sessionId: session.id, name }, 'ssh global request failed');
        reject?.();
      }),
    );
    conn.on('session', (_accept, reject) => refuseChannel(phases, session, 'session', reject));
    conn.on('tcpip', (accept, reject, info) => handleDirectTcpip(phases, session, { accept, reject }, info));
    conn.on('openssh.streamlocal', (_accept, reject) => refuseChannel(phases, session, 'direct-streamlocal@openssh.com', reject));
  }

  listen(port: number, host: string): Promise<{ port: number }> {
    const { netServer } = this;
    return new Promise((resolve, reject) => {
      netServer.once('error', reject);
      netServer.listen(port, host, () => {
        netServer.off('error', reject);
        netServer.on('error', (err) => this.deps.logger.error({ err }, 'ssh gateway listener error'));
        const address = netServer.address();
        resolve({ port: typeof address === 'object' && address ? address.port : port });
      });
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    const stopped = new Promise<void>((resolve) => {
      if (!this.netServer.listening) return resolve();
      this.netServer.close(() => resolve());
    });
    const ended = this.registry.all().map((s) => this.registry.end(s, 'GATEWAY_CLOSED'));
    for (const state of this.states) {
      if (!state.session) state.socket.destroy();
    }
    await Promise.all(ended);
    for (const state of this.states) state.socket.destroy();
    await stopped;
  }

  revokeDevice(deviceId: string): void {
    for (const session of this.registry.ofDevice(deviceId)) void this.registry.end(session, 'REVOKED');
  }

  takeOverDevice(deviceId: string, startedAt: Date): number {
    let ended = 0;
    for (const session of this.registry.ofDevice(deviceId)) {
      if (session.since.getTime() > startedAt.getTime()) continue;
      void this.registry.end(session, 'TAKEOVER');
      ended += 1;
    }
    return ended;
  }

  endRevokedSessions(isRevoked: (cert: { serial: bigint; keyId: string }) => boolean): number {
    let ended = 0;
    for (const session of this.registry.all()) {
      const { identity } = session;
      if (identity.role !== 'device' || !isRevoked(identity)) continue;
      void this.registry.end(session, 'REVOKED');
      ended += 1;
    }
    return ended;
  }

  endSessionsOfRetiredCas(accepted: readonly PublicKey[]): number {
    let ended = 0;
    for (const session of this.registry.all()) {
      if (accepted.some((key) => key.equals(session.identity.signatureKey))) continue;
      void this.registry.end(session, 'CA_RETIRED');
      ended += 1;
    }
    return ended;
  }

  dialTunnel(deviceId: string, port: number, origin: { address: string; port: number }): ReturnType<Gateway['dialTunnel']> {
    const holder = this.registry.owner(port);
    const forward = holder?.forwards.get(port);
    if (!authorizeReach(holder, port).allow || holder?.deviceId !== deviceId || !forward) {
      return Promise.reject(Object.assign(new Error(`no tunnel of ${deviceId} holds port ${port}`), { code: 'ECONNREFUSED' }));
    }
    return forward.openChannel(origin);
  }

  tunnelPorts(deviceId: string): number[] {
    // Per proxied request: keep it cheap (one session, a port or two, is the usual case).
    const sessions = this.registry.ofDevice(deviceId);
    const ports = sessions.length === 1 ? [...sessions[0]!.forwards.keys()] : [...new Set(sessions.flatMap((s) => [...s.forwards.keys()]))];
    return ports.length > 1 ? ports.sort((a, b) => a - b) : ports;
  }

  stats(): GatewayStats {
    return this.counters.snapshot({ connections: this.states.size, unauthenticated: this.unauthenticated, ...this.registry.gauges() });
  }

  sessions(): ReturnType<Gateway['sessions']> {
    return this.registry.all().map((s) => s.info());
  }
}
