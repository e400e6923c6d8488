/**
 * The embedded SSH gateway: an ssh2 Server that lets a device certificate
 * do one thing, a remote forward on 127.0.0.1:<its ports>, and an operator
 * certificate another, a direct-tcpip connection to a live device port.
 * It translates ssh2 events into the pure decisions of authorize.ts and
 * auth.ts; everything it does not recognise is refused.
 *
 * Accounting: every refusal (authentication, forward, channel) is logged,
 * counted in stats() and audited with a reason code; the peer only sees the
 * plain SSH failure. Two exceptions, both documented: "none" (the method
 * list probe every client sends first) is not an attempt, and connections
 * refused before any SSH byte (rate limit, unauthenticated cap) are counted
 * and logged once per run, not audited - there is no one to name yet.
 */
import { createConnection, createServer, type Server as NetServer, type Socket } from 'node:net';
import { coalesceWrites } from './coalesce.js';
import { installPaddingPool } from './ssh2-padding.js';
import ssh2 from 'ssh2';
import type { AuthContext, Connection, RejectConnection, ServerChannel } from 'ssh2';
import { encodePrivateKey } from '../../ca/index.js';
import { decideUserauth, type AuthDecision, type AuthRefusal } from './auth.js';
import { DEVICE_NAME, TUNNEL_HOST } from '../../api/tunnel.js';
import {
  authorizeChannel,
  authorizeDirectTcpip,
  authorizeForward,
  authorizeGlobalRequest,
  authorizeReach,
  authorizeTakeover,
  resolveNamedTarget,
  type CertificateCheckDeps,
  type Identity,
} from './authorize.js';
import { RemoteForward, relay } from './forwards.js';
import { ConnectionRateLimiter } from '../core/rate-limit.js';
import { SessionRegistry, actorOf } from './registry.js';
import { GatewaySession } from './session.js';
import { GatewayCounters, type ConnectionRefusal } from './stats.js';
import { DEFAULT_LIMITS, type AuditEvent, type Gateway, type GatewayDeps, type GatewayLimits, type PresenceUpdate } from './types.js';

/** Per TCP connection, from accept to close. */
interface ConnState {
  readonly socket: Socket;
  readonly remoteAddr: string;
  conn?: Connection;
  failures: number;
  authTimer?: NodeJS.Timeout;
  /** Set by a successful signature check, just before ssh2 emits "ready". */
  identity?: Identity;
  session?: GatewaySession;
}

/** DEFAULT_LIMITS, overridden by whatever LIMITS sets (an undefined value keeps the default). */
function resolveLimits(limits: GatewayLimits | undefined): Required<GatewayLimits> {
  const out: Record<string, number> = { ...DEFAULT_LIMITS };
  for (const [name, value] of Object.entries(limits ?? {})) if (typeof value === 'number') out[name] = value;
  return out as Required<GatewayLimits>;
}

function truncate(text: string, max = 128): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function createGateway(deps: GatewayDeps): Gateway {
  installPaddingPool();
  const limits = resolveLimits(deps.limits);
  const { logger, clock } = deps;
  const certDeps: CertificateCheckDeps = {
    trustedCaKeys: deps.userCaKeys,
    isRevoked: (c) => deps.isRevoked(c),
    ...(deps.portPool ? { pool: deps.portPool } : {}),
  };
  const counters = new GatewayCounters();
  const limiter = new ConnectionRateLimiter({ ratePerSecond: limits.perIpRatePerSecond, burst: limits.perIpBurst });
  const states = new Set<ConnState>();
  /** Until ssh2 reports the connection (after the version exchange), by "address|port". */
  const awaitingHeader = new Map<string, ConnState>();
  let unauthenticated = 0;
  let nextSessionId = 1;
  let closing = false;

  const audit = (event: AuditEvent): void => {
    try {
      deps.audit(event);
    } catch (err) {
      logger.error({ err }, 'audit sink failed');
    }
  };
  const presence = (update: PresenceUpdate): void => {
    try {
      deps.presence?.(update);
    } catch (err) {
      logger.error({ err }, 'presence sink failed');
    }
  };
  const registry = new SessionRegistry({ counters, logger, audit, presence });
  const endSession = (session: GatewaySession, reason: string | undefined): Promise<void> => registry.end(session, reason);

  // ssh2 is used for the protocol only: sockets come from our own listener
  // (injectSocket), so that limits apply before ssh2 allocates anything.
  const sshServer = new ssh2.Server({
    hostKeys: [encodePrivateKey(deps.hostKey)],
    ident: 'certunnel',
    keepaliveInterval: limits.keepaliveIntervalMs,
    keepaliveCountMax: limits.keepaliveCountMax,
  });
  sshServer.on('connection', onSshConnection);
  const netServer: NetServer = createServer(onSocket);

  function refuseConnection(socket: Socket, reason: ConnectionRefusal, remoteAddr: string, log: boolean): void {
    counters.connectionRefused(reason);
    if (log) logger.warn({ reason, remoteAddr }, 'ssh connection refused');
    socket.destroy();
  }

  function onSocket(socket: Socket): void {
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
    if (closing) return refuseConnection(socket, 'GATEWAY_CLOSING', remoteAddr, false);
    const rate = limiter.take(remoteAddr);
    if (!rate.allowed) return refuseConnection(socket, 'RATE_LIMITED', remoteAddr, rate.firstRefusal);
    if (unauthenticated >= limits.maxUnauthenticated) return refuseConnection(socket, 'TOO_MANY_UNAUTHENTICATED', remoteAddr, true);
    const state: ConnState = { socket, remoteAddr, failures: 0 };
    states.add(state);
    unauthenticated += 1;
    const key = `${remoteAddr}|${socket.remotePort}`;
    awaitingHeader.set(key, state);
    state.authTimer = setTimeout(() => refuseAuth(state, 'AUTH_TIMEOUT', undefined, true), limits.authTimeoutMs);
    state.authTimer.unref();
    socket.once('close', () => {
      awaitingHeader.delete(key);
      states.delete(state);
      if (!state.session) {
        clearTimeout(state.authTimer);
        unauthenticated -= 1;
      } else {
        void endSession(state.session, undefined);
      }
    });
    sshServer.injectSocket(socket);
  }

  function onSshConnection(conn: Connection, info: { ip: string; port: number }): void {
    const key = `${info.ip}|${info.port}`;
    const state = awaitingHeader.get(key);
    awaitingHeader.delete(key);
    if (!state) {
      conn.end();
      return;
    }
    state.conn = conn;
    conn.on('error', (err: Error & { level?: string }) => {
      logger.info({ remoteAddr: state.remoteAddr, err: err.message, level: err.level }, 'ssh connection error');
      // ssh2 gave up on keepalives and sent FIN, but a dead peer never
      // answers it: drop the session (and its ports) now, not after TCP's
      // retransmission timeout.
      if (err.level === 'client-timeout') {
        if (state.session) void endSession(state.session, 'KEEPALIVE_TIMEOUT');
        else state.socket.destroy();
      }
    });
    conn.on('authentication', (ctx) => onAuthentication(state, ctx));
    conn.on('ready', () => onReady(state, conn));
  }

  // -------------------------------------------------------------------------
  // Authentication

  function onAuthentication(state: ConnState, ctx: AuthContext): void {
    let decision: AuthDecision;
    try {
      decision = decideUserauth(
        ctx.method === 'publickey'
          ? { method: ctx.method, keyAlgo: ctx.key.algo, keyBlob: ctx.key.data, signature: ctx.signature, signedData: ctx.blob }
          : { method: ctx.method },
        clock(),
        certDeps,
      );
    } catch (err) {
      // An injected dependency (isRevoked, clock) failed: fail closed.
      logger.error({ err, remoteAddr: state.remoteAddr }, 'ssh authentication check failed');
      decision = { kind: 'refuse', reason: 'INTERNAL_ERROR' };
    }
    switch (decision.kind) {
      case 'list-methods':
        ctx.reject(['publickey']);
        return;
      case 'key-acceptable':
        // SSH_MSG_USERAUTH_PK_OK: the client may now sign (RFC 4252 section 7).
        ctx.accept();
        return;
      case 'accept':
        counters.signature(decision.signatureForm);
        state.identity = decision.identity;
        ctx.accept();
        return;
      case 'refuse':
        ctx.reject(['publickey']);
        refuseAuth(state, decision.reason, decision.claimed, false, ctx.method);
        return;
    }
  }

  function refuseAuth(
    state: ConnState,
    reason: AuthRefusal,
    claimed: { keyId: string; serial: bigint } | undefined,
    drop: boolean,
    method?: string,
  ): void {
    counters.authFailure(reason);
    const details: Record<string, unknown> = { reason };
    if (method) details.method = method;
    if (claimed) {
      details.claimedKeyId = truncate(claimed.keyId);
      details.serial = claimed.serial.toString();
    }
    logger.warn({ remoteAddr: state.remoteAddr, ...details }, 'ssh authentication refused');
    audit({ actor: 'unauthenticated', action: 'ssh.auth', remoteAddr: state.remoteAddr, outcome: 'refused', details });
    state.failures += 1;
    if (!drop && state.failures >= limits.maxAuthAttempts) {
      refuseAuth(state, 'TOO_MANY_ATTEMPTS', undefined, true);
      return;
    }
    if (drop) {
      if (state.conn) state.conn.end();
      state.socket.destroy();
    }
  }

  function onReady(state: ConnState, conn: Connection): void {
    const identity = state.identity;
    if (!identity || closing || state.socket.destroyed) {
      conn.end();
      return;
    }
    clearTimeout(state.authTimer);
    unauthenticated -= 1;
    const session = new GatewaySession(nextSessionId++, identity, conn, state.socket, state.remoteAddr, clock());
    state.session = session;
    registry.add(session);
    logger.info(
      { sessionId: session.id, actor: actorOf(identity), serial: identity.serial.toString(), remoteAddr: state.remoteAddr },
      'ssh session authenticated',
    );
    session.armExpiry(clock, () => void endSession(session, 'EXPIRED'));
    conn.on('request', (accept: ((port?: number) => void) | undefined, reject: (() => void) | undefined, name: string, info: unknown) =>
      onGlobalRequest(session, name, info as { bindAddr: string; bindPort: number }, accept, reject).catch((err: unknown) => {
        logger.error({ err, sessionId: session.id, name }, 'ssh global request failed');
        reject?.();
      }),
    );
    conn.on('session', (_accept, reject) => refuseChannel(session, 'session', reject));
    conn.on('tcpip', (accept, reject, info) => onDirectTcpip(session, accept, reject, info));
    conn.on('openssh.streamlocal', (_accept, reject) => refuseChannel(session, 'direct-streamlocal@openssh.com', reject));
  }

  // -------------------------------------------------------------------------
  // Global requests: tcpip-forward (RFC 4254 section 7.1)

  function refuseForward(session: GatewaySession, reason: string, target: string, reject: (() => void) | undefined): void {
    counters.forwardRefused(reason);
    const { identity } = session;
    logger.warn({ sessionId: session.id, actor: actorOf(identity), target, reason }, 'ssh forward refused');
    audit({ actor: actorOf(identity), action: 'ssh.forward', target, remoteAddr: session.remoteAddr, outcome: 'refused', details: { reason } });
    reject?.();
  }

  async function onGlobalRequest(
    session: GatewaySession,
    name: string,
    info: { bindAddr: string; bindPort: number },
    accept: ((port?: number) => void) | undefined,
    reject: (() => void) | undefined,
  ): Promise<void> {
    if (session.closed) return reject?.();
    const allowed = authorizeGlobalRequest(name);
    if (!allowed.allow) return refuseForward(session, allowed.reason, name, reject);
    const target = `${info.bindAddr}:${info.bindPort}`;
    if (name === 'cancel-tcpip-forward') {
      const forward = session.forwards.get(info.bindPort);
      if (!forward) return reject?.();
      session.forwards.delete(info.bindPort);
      registry.release(info.bindPort, session);
      await forward.close();
      accept?.();
      return;
    }
    const decision = authorizeForward(session.identity.principal, info);
    if (!decision.allow) return refuseForward(session, decision.reason, target, reject);
    const port = info.bindPort;
    const owner = registry.owner(port);
    if (owner) {
      const takeover = authorizeTakeover(session, owner);
      if (!takeover.allow) return refuseForward(session, takeover.reason, target, reject);
    }
    // The stale session lets go of its listeners first; the port is ours meanwhile.
    const previous = owner ? endSession(owner, 'TAKEOVER') : undefined;
    const takeover = owner !== undefined;
    registry.reserve(port, session);
    let forward: RemoteForward;
    try {
      await previous;
      forward = await RemoteForward.open({ conn: session.conn, bindAddr: info.bindAddr, port, bytes: counters.bytes });
    } catch (err) {
      registry.release(port, session);
      logger.warn({ sessionId: session.id, port, err: (err as NodeJS.ErrnoException).code ?? String(err) }, 'ssh forward bind failed');
      return refuseForward(session, 'BIND_FAILED', target, reject);
    }
    if (session.closed || registry.owner(port) !== session) {
      // Revoked, taken over or gone while binding: give the port back.
      registry.release(port, session);
      await forward.close();
      return reject?.();
    }
    session.forwards.set(port, forward);
    logger.info({ sessionId: session.id, actor: actorOf(session.identity), target, takeover }, 'ssh forward listening');
    accept?.();
  }

  // -------------------------------------------------------------------------
  // Channels opened by the client (RFC 4254 sections 6, 7.2)

  function refuseChannel(session: GatewaySession, kind: string, reject: RejectConnection, reasonOverride?: string, target?: string): void {
    const decision = authorizeChannel(session.identity.role, kind);
    const reason = reasonOverride ?? (decision.allow ? 'UNKNOWN_CHANNEL' : decision.reason);
    counters.channelRefused(reason);
    const actor = actorOf(session.identity);
    logger.warn({ sessionId: session.id, actor, kind, target, reason }, 'ssh channel refused');
    audit({ actor, action: 'ssh.channel', target: target ?? kind, remoteAddr: session.remoteAddr, outcome: 'refused', details: { reason, kind } });
    reject();
  }

  function onDirectTcpip(
    session: GatewaySession,
    accept: () => ServerChannel,
    reject: RejectConnection,
    info: { destIP: string; destPort: number },
  ): void {
    const kind = 'direct-tcpip';
    const target = `${truncate(info.destIP, 64)}:${info.destPort}`;
    const channelDecision = authorizeChannel(session.identity.role, kind);
    if (!channelDecision.allow) return refuseChannel(session, kind, reject, channelDecision.reason, target);
    const { identity } = session;
    // A device name as the target host: resolved to 127.0.0.1:<port of its block>, only for the certificate's own device.
    if (info.destIP !== TUNNEL_HOST && deps.resolveDevice && identity.role === 'operator' && DEVICE_NAME.test(info.destIP)) {
      deps
        .resolveDevice(info.destIP)
        .then((device) => {
          if (session.closed) return reject();
          const named = resolveNamedTarget(identity, device, info.destPort);
          if (!named.allow) return refuseChannel(session, kind, reject, named.reason, target);
          openDirectTcpip(session, accept, reject, { destIP: named.destAddr, destPort: named.destPort });
        })
        .catch((err: unknown) => {
          logger.error({ err, sessionId: session.id }, 'ssh device lookup failed');
          refuseChannel(session, kind, reject, 'INTERNAL_ERROR', target);
        });
      return;
    }
    openDirectTcpip(session, accept, reject, info);
  }

  function openDirectTcpip(
    session: GatewaySession,
    accept: () => ServerChannel,
    reject: RejectConnection,
    info: { destIP: string; destPort: number },
  ): void {
    const kind = 'direct-tcpip';
    const target = `${info.destIP}:${info.destPort}`;
    const decision = authorizeDirectTcpip(session.identity.principal, { destAddr: info.destIP, destPort: info.destPort });
    if (!decision.allow) return refuseChannel(session, kind, reject, decision.reason, target);
    const owner = registry.owner(info.destPort);
    const reach = authorizeReach(owner, info.destPort);
    if (!owner || !reach.allow) return refuseChannel(session, kind, reject, reach.allow ? 'TUNNEL_NOT_CONNECTED' : reach.reason, target);
    const actor = actorOf(session.identity);
    // Who reached which device: the target is the device, the certificate (key id, serial) links to its issuance audit.
    audit({
      actor, action: 'ssh.reach', target: owner.deviceId, remoteAddr: session.remoteAddr, outcome: 'allowed',
      details: { deviceId: owner.deviceId, port: info.destPort, keyId: session.identity.keyId, serial: session.identity.serial.toString() },
    });
    const socket = createConnection({ host: TUNNEL_HOST, port: info.destPort, allowHalfOpen: true });
    socket.on('error', () => undefined);
    session.directRelays.add(socket);
    socket.once('close', () => session.directRelays.delete(socket));
    let opened = false;
    socket.once('connect', () => {
      if (session.closed) return socket.destroy();
      opened = true;
      // Confirm the channel only once the connection exists, as sshd does.
      relay(socket, accept());
    });
    socket.once('close', () => {
      if (!opened) reject();
    });
  }

  // -------------------------------------------------------------------------

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        netServer.once('error', reject);
        netServer.listen(port, host, () => {
          netServer.off('error', reject);
          netServer.on('error', (err) => logger.error({ err }, 'ssh gateway listener error'));
          const address = netServer.address();
          resolve({ port: typeof address === 'object' && address ? address.port : port });
        });
      });
    },

    async close() {
      closing = true;
      const stopped = new Promise<void>((resolve) => {
        if (!netServer.listening) return resolve();
        netServer.close(() => resolve());
      });
      const ended = registry.all().map((s) => endSession(s, 'GATEWAY_CLOSED'));
      for (const state of states) {
        if (!state.session) state.socket.destroy();
      }
      await Promise.all(ended);
      for (const state of states) state.socket.destroy();
      await stopped;
    },

    revokeDevice(deviceId) {
      for (const session of registry.ofDevice(deviceId)) void endSession(session, 'REVOKED');
    },

    dialTunnel(deviceId, port, origin) {
      const owner = registry.owner(port);
      const forward = owner?.forwards.get(port);
      if (!authorizeReach(owner, port).allow || owner?.deviceId !== deviceId || !forward) {
        return Promise.reject(Object.assign(new Error(`no tunnel of ${deviceId} holds port ${port}`), { code: 'ECONNREFUSED' }));
      }
      return forward.openChannel(origin);
    },

    tunnelPorts(deviceId) {
      // Per proxied request: keep it cheap (one session, a port or two, is the usual case).
      const sessions = registry.ofDevice(deviceId);
      const ports = sessions.length === 1 ? [...sessions[0]!.forwards.keys()] : [...new Set(sessions.flatMap((s) => [...s.forwards.keys()]))];
      return ports.length > 1 ? ports.sort((a, b) => a - b) : ports;
    },

    stats() {
      return counters.snapshot({ connections: states.size, unauthenticated, ...registry.gauges() });
    },

    sessions() {
      return registry.all().map((s) => s.info());
    },
  };
}
