/**
 * This node's end of the node-to-node link (docs/cluster.md, "Reaching
 * devices through any node"): an SSH server on cluster.internalListen that
 * other nodes of the cluster, and nobody else, use to reach a device whose
 * tunnel is here.
 *
 * - Host key: this node's relay key. Its certificate (node:<id>, signed by
 *   the cluster's user CA) goes to the client in the SSH_MSG_USERAUTH_BANNER
 *   (RFC 4252 section 5.4), after key exchange, so that the client checks
 *   the CA vouches for the host key it has just seen prove itself.
 * - User authentication: "publickey" with a node certificate only
 *   (relay-authorize.ts: checkNodeCertificate, then authorizeNodePeer against
 *   the registry), the session signature verified here as the gateway does.
 * - Then only direct-tcpip channels, whose target host is a device id and
 *   port a port of its block: OPENTARGET checks and connects it (as a local
 *   operator connection would), and the channel's first line says
 *   "ok" or "refused <CODE>" (relay-authorize.ts). Everything else is refused.
 *
 * Refusals are logged and audited (ssh.relay.auth, ssh.relay.channel) with
 * their codes; relayed connections are audited (ssh.relay.reach).
 */
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { AuthContext, Connection, ServerChannel } from 'ssh2';
import { ED25519_CERT, encodePrivateKey, verifyBytes, type KeyPair } from '../../ca/index.js';
import { coalesceWrites } from './coalesce.js';
import { relay } from './forwards.js';
import { truncate } from './peer-text.js';
import {
  authorizeNodePeer,
  checkNodeCertificate,
  formatRelayStatus,
  parseRelayTarget,
  type NodeCertDeps,
  type NodeIdentity,
  type RegisteredNode,
} from './relay-authorize.js';
import type { AuditEvent, GatewayLogger } from './types.js';
import { unwrapSessionSignature } from './userauth.js';

/** A refusal with a stable code, thrown by OPENTARGET. */
export class RelayRefusal extends Error {
  override name = 'RelayRefusal';
  constructor(readonly code: string, message = code) {
    super(message);
  }
}

export interface RelayServerDeps {
  /** This node's relay key (the SSH host key of the link). */
  readonly hostKey: KeyPair;
  /** This node's current relay certificate, one OpenSSH line (sent as the banner). */
  certificateLine(): string;
  readonly certDeps: NodeCertDeps;
  readonly clock: () => Date;
  /** The registry's record of a node (undefined: none). A lookup that rejects refuses the login. */
  lookupNode(id: string): Promise<RegisteredNode | undefined>;
  /** A node whose heartbeat is older than this is down. */
  readonly downAfterMs: number;
  /**
   * Connects PORT of DEVICEID for node FROM, exactly as a local operator
   * connection would; rejects with RelayRefusal (a code) when it may not or
   * cannot (DEVICE_OFFLINE: its tunnel is not here).
   */
  openTarget(from: NodeIdentity, deviceId: string, port: number): Promise<Duplex>;
  readonly logger: GatewayLogger;
  audit(event: AuditEvent): void;
  /** Login grace time (default 10 s) and unauthenticated connections at once (default 64). */
  readonly authTimeoutMs?: number;
  readonly maxUnauthenticated?: number;
}

interface PeerState {
  readonly socket: Socket;
  readonly remoteAddr: string;
  identity?: NodeIdentity;
  authenticated: boolean;
  failures: number;
  timer?: NodeJS.Timeout;
  readonly relays: Set<Duplex>;
}

const MAX_AUTH_ATTEMPTS = 3;

export class RelayServer {
  private readonly net: NetServer;
  private readonly peers = new Set<PeerState>();
  private unauthenticated = 0;
  private closing = false;

  constructor(private readonly deps: RelayServerDeps) {
    this.net = createServer((socket) => this.onSocket(socket));
  }

  listen(port: number, host: string): Promise<{ port: number }> {
    return new Promise((resolve, reject) => {
      this.net.once('error', reject);
      this.net.listen(port, host, () => {
        this.net.off('error', reject);
        this.net.on('error', (err) => this.deps.logger.error({ err }, 'relay listener error'));
        const address = this.net.address();
        resolve({ port: typeof address === 'object' && address ? address.port : port });
      });
    });
  }

  /** Connected peers, authenticated or not, and their live relayed connections. */
  stats(): { peers: number; relays: number } {
    let relays = 0;
    for (const p of this.peers) relays += p.relays.size;
    return { peers: this.peers.size, relays };
  }

  private onSocket(socket: Socket): void {
    socket.on('error', () => undefined);
    // As the gateway: no Nagle, and one TCP write per turn of the event loop (coalesce.ts).
    socket.setNoDelay(true);
    coalesceWrites(socket);
    const remoteAddr = socket.remoteAddress ?? '';
    if (this.closing || this.unauthenticated >= (this.deps.maxUnauthenticated ?? 64)) {
      socket.destroy();
      return;
    }
    const state: PeerState = { socket, remoteAddr, authenticated: false, failures: 0, relays: new Set() };
    this.peers.add(state);
    this.unauthenticated += 1;
    state.timer = setTimeout(() => this.refuseAuth(state, undefined, 'AUTH_TIMEOUT', true), this.deps.authTimeoutMs ?? 10_000);
    state.timer.unref();
    socket.once('close', () => {
      clearTimeout(state.timer);
      if (!state.authenticated) this.unauthenticated -= 1;
      this.peers.delete(state);
      for (const r of state.relays) r.destroy();
    });
    // A server per connection: the banner (this node's certificate) is read when it is made, and the certificate is re-signed now and then.
    const server = new ssh2.Server({ hostKeys: [encodePrivateKey(this.deps.hostKey)], ident: 'certunnel-relay', banner: this.deps.certificateLine(), keepaliveInterval: 15_000, keepaliveCountMax: 3 });
    server.on('connection', (conn) => this.onConnection(state, conn));
    server.injectSocket(socket);
  }

  private onConnection(state: PeerState, conn: Connection): void {
    conn.on('error', (err: Error) => this.deps.logger.info({ remoteAddr: state.remoteAddr, err: err.message }, 'relay connection error'));
    conn.on('authentication', (ctx) => this.onAuth(state, ctx));
    conn.on('ready', () => this.onReady(state, conn));
  }

  private onAuth(state: PeerState, ctx: AuthContext): void {
    if (ctx.method === 'none') return ctx.reject(['publickey']);
    if (ctx.method !== 'publickey') return this.refuseAuth(state, ctx, 'METHOD_NOT_ALLOWED');
    if (ctx.key.algo !== ED25519_CERT) return this.refuseAuth(state, ctx, 'NOT_A_CERTIFICATE');
    let check: ReturnType<typeof checkNodeCertificate>;
    try {
      check = checkNodeCertificate(ctx.key.data, this.deps.clock(), this.deps.certDeps);
    } catch (err) {
      this.deps.logger.error({ err }, 'relay certificate check failed');
      return this.refuseAuth(state, ctx, 'INTERNAL_ERROR');
    }
    if (!check.ok) return this.refuseAuth(state, ctx, check.reason);
    const { identity } = check;
    if (!ctx.signature) return ctx.accept(); // RFC 4252 section 7: the key is acceptable, sign now
    const unwrapped = unwrapSessionSignature(ctx.signature);
    if (!unwrapped || !ctx.blob || !verifyBytes(identity.publicKey, ctx.blob, unwrapped.raw)) return this.refuseAuth(state, ctx, 'BAD_SESSION_SIGNATURE', false, identity);
    this.deps.lookupNode(identity.nodeId).then(
      (node) => {
        if (state.socket.destroyed) return;
        const verdict = authorizeNodePeer(identity, node, this.deps.clock(), this.deps.downAfterMs);
        if (!verdict.allow) return this.refuseAuth(state, ctx, verdict.reason, true, identity);
        state.identity = identity;
        ctx.accept();
      },
      (err: unknown) => {
        this.deps.logger.error({ err, nodeId: identity.nodeId }, 'relay: node lookup failed');
        this.refuseAuth(state, ctx, 'INTERNAL_ERROR', true, identity);
      },
    );
  }

  /** Logs and audits a refused login; drops the connection when DROP or after MAX_AUTH_ATTEMPTS. */
  private refuseAuth(state: PeerState, ctx: AuthContext | undefined, reason: string, drop = false, identity?: NodeIdentity): void {
    const details: Record<string, unknown> = { reason };
    if (identity) Object.assign(details, { claimedKeyId: truncate(identity.keyId), serial: identity.serial.toString() });
    this.deps.logger.warn({ remoteAddr: state.remoteAddr, ...details }, 'relay authentication refused');
    this.deps.audit({ actor: 'unauthenticated', action: 'ssh.relay.auth', remoteAddr: state.remoteAddr, outcome: 'refused', details });
    state.failures += 1;
    if (ctx && !state.socket.destroyed) ctx.reject(['publickey']);
    if (drop || state.failures >= MAX_AUTH_ATTEMPTS) {
      // The refusal is corked until the next turn (coalesceWrites): let it go out, then end the connection.
      setImmediate(() => state.socket.end());
      setTimeout(() => state.socket.destroy(), 1000).unref();
    }
  }

  private onReady(state: PeerState, conn: Connection): void {
    const { identity } = state;
    if (!identity || this.closing) {
      state.socket.destroy();
      return;
    }
    clearTimeout(state.timer);
    state.authenticated = true;
    this.unauthenticated -= 1;
    // The certificate is short-lived: the link ends when it expires, and the peer comes back with a fresh one.
    const msLeft = Number(identity.validBefore) * 1000 - this.deps.clock().getTime();
    state.timer = setTimeout(() => state.socket.destroy(), Math.max(0, Math.min(msLeft, 2 ** 31 - 1)));
    state.timer.unref();
    this.deps.logger.info({ nodeId: identity.nodeId, remoteAddr: state.remoteAddr }, 'relay: node connected');
    const refuseKind = (kind: string) => (_accept: unknown, reject: () => void) => {
      this.auditChannel(state, 'refused', kind, { reason: 'UNKNOWN_CHANNEL' });
      reject();
    };
    conn.on('session', refuseKind('session'));
    conn.on('openssh.streamlocal', refuseKind('direct-streamlocal@openssh.com'));
    conn.on('request', (_accept, reject) => reject?.());
    conn.on('tcpip', (accept, reject, info) => this.onRelayRequest(state, identity, accept, reject, info.destIP, info.destPort));
  }

  private auditChannel(state: PeerState, outcome: 'refused' | 'allowed', target: string, details: Record<string, unknown>): void {
    const actor = state.identity ? state.identity.keyId : 'unauthenticated';
    this.deps.audit({ actor, action: outcome === 'allowed' ? 'ssh.relay.reach' : 'ssh.relay.channel', target, remoteAddr: state.remoteAddr, outcome, details });
  }

  private onRelayRequest(state: PeerState, from: NodeIdentity, accept: () => ServerChannel, reject: () => void, host: string, port: number): void {
    const target = parseRelayTarget(host, port);
    const label = `${truncate(host, 64)}:${port}`;
    /** The refusal reaches the peer as the channel's first line, then the channel closes: nothing else was opened. */
    const refuse = (code: string): void => {
      this.deps.logger.warn({ nodeId: from.nodeId, target: label, reason: code }, 'relay request refused');
      this.auditChannel(state, 'refused', target?.deviceId ?? label, { reason: code, port, node: from.nodeId });
      if (state.socket.destroyed) return reject();
      const channel = accept();
      channel.on('error', () => undefined);
      channel.end(formatRelayStatus(code));
    };
    if (!target) return refuse('BAD_REQUEST');
    this.deps.openTarget(from, target.deviceId, target.port).then(
      (stream) => {
        if (state.socket.destroyed || this.closing) {
          stream.destroy();
          return reject();
        }
        this.auditChannel(state, 'allowed', target.deviceId, { deviceId: target.deviceId, port: target.port, node: from.nodeId });
        state.relays.add(stream);
        stream.once('close', () => state.relays.delete(stream));
        const channel = accept();
        channel.write(formatRelayStatus(null));
        relay(stream, channel);
      },
      (err: unknown) => {
        if (err instanceof RelayRefusal) return refuse(err.code);
        this.deps.logger.error({ err, target: label }, 'relay target failed');
        refuse('INTERNAL_ERROR');
      },
    );
  }

  async close(): Promise<void> {
    this.closing = true;
    const stopped = new Promise<void>((resolve) => (this.net.listening ? this.net.close(() => resolve()) : resolve()));
    for (const p of this.peers) p.socket.destroy();
    await stopped;
  }
}
