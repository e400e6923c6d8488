/**
 * Channels a client opens (RFC 4254 sections 6, 7.2): every kind is refused
 * but an operator's direct-tcpip, which goes through authorizeChannel and
 * authorizeDirectTcpip (its own block, on 127.0.0.1), then authorizeReach
 * (only while a device tunnel listens on that port), and is then relayed
 * to 127.0.0.1:<port>. A target may name the device instead
 * (`ssh -W kiosk-42:22`): resolveNamedTarget maps it onto the block first.
 * Every refusal is counted, logged and audited (ssh.channel, outcome
 * refused); every reach is audited (ssh.reach, outcome allowed).
 */
import { createConnection } from 'node:net';
import type { RejectConnection, ServerChannel } from 'ssh2';
import { DEVICE_NAME, TUNNEL_HOST } from '../../api/index.js';
import { authorizeChannel, authorizeDirectTcpip, authorizeReach, resolveNamedTarget } from './authorize.js';
import { relay } from './forwards.js';
import { truncate } from './peer-text.js';
import { actorOf, type SessionRegistry } from './registry.js';
import type { GatewaySession } from './session.js';
import type { GatewayCounters } from './stats.js';
import type { AuditEvent, GatewayDeps, GatewayLogger } from './types.js';

export interface ChannelDeps {
  readonly registry: SessionRegistry;
  readonly counters: GatewayCounters;
  readonly logger: GatewayLogger;
  audit(event: AuditEvent): void;
  readonly resolveDevice: GatewayDeps['resolveDevice'];
  readonly remoteReach?: GatewayDeps['remoteReach'];
}

/** What a direct-tcpip channel asks for (RFC 4254 section 7.2), as ssh2 reports it. */
export interface DirectTcpipInfo {
  readonly destIP: string;
  readonly destPort: number;
}

/** ssh2's answers to one channel open request. */
export interface ChannelReply {
  readonly accept: () => ServerChannel;
  readonly reject: RejectConnection;
}

const DIRECT_TCPIP = 'direct-tcpip';

/**
 * Refuses a channel of KIND: for REASON when given, else for the reason
 * authorizeChannel gives KIND.
 */
export function refuseChannel(deps: ChannelDeps, session: GatewaySession, kind: string, reject: RejectConnection, reason?: string, target?: string): void {
  const decision = authorizeChannel(session.identity.role, kind);
  const why = reason ?? (decision.allow ? 'UNKNOWN_CHANNEL' : decision.reason);
  deps.counters.channelRefused(why);
  const actor = actorOf(session.identity);
  deps.logger.warn({ sessionId: session.id, actor, kind, target, reason: why }, 'ssh channel refused');
  deps.audit({ actor, action: 'ssh.channel', target: target ?? kind, remoteAddr: session.remoteAddr, outcome: 'refused', details: { reason: why, kind } });
  reject();
}

export function handleDirectTcpip(deps: ChannelDeps, session: GatewaySession, reply: ChannelReply, info: DirectTcpipInfo): void {
  const target = `${truncate(info.destIP, 64)}:${info.destPort}`;
  const channelDecision = authorizeChannel(session.identity.role, DIRECT_TCPIP);
  if (!channelDecision.allow) return refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, channelDecision.reason, target);
  const { resolveDevice } = deps;
  if (resolveDevice && info.destIP !== TUNNEL_HOST && session.identity.role === 'operator' && DEVICE_NAME.test(info.destIP)) {
    connectNamedTarget(deps, session, reply, info, target, resolveDevice);
    return;
  }
  connectDirectTcpip(deps, session, reply, info);
}

/** A device name as the target host: resolved to 127.0.0.1:<port of its block>, only for the certificate's own device. */
function connectNamedTarget(
  deps: ChannelDeps,
  session: GatewaySession,
  reply: ChannelReply,
  info: DirectTcpipInfo,
  target: string,
  resolveDevice: NonNullable<GatewayDeps['resolveDevice']>,
): void {
  resolveDevice(info.destIP)
    .then((device) => {
      if (session.closed) return reply.reject();
      const named = resolveNamedTarget(session.identity, device, info.destPort);
      if (!named.allow) return refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, named.reason, target);
      connectDirectTcpip(deps, session, reply, { destIP: named.destAddr, destPort: named.destPort });
    })
    .catch((err: unknown) => {
      deps.logger.error({ err, sessionId: session.id }, 'ssh device lookup failed');
      refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, 'INTERNAL_ERROR', target);
    });
}

function connectDirectTcpip(deps: ChannelDeps, session: GatewaySession, reply: ChannelReply, info: DirectTcpipInfo): void {
  const target = `${info.destIP}:${info.destPort}`;
  const decision = authorizeDirectTcpip(session.identity.principal, { destAddr: info.destIP, destPort: info.destPort });
  if (!decision.allow) return refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, decision.reason, target);
  const holder = deps.registry.owner(info.destPort);
  const reach = authorizeReach(holder, info.destPort);
  // Not held here at all: the tunnel may be on another node of the cluster (relay-client.ts).
  if (!reach.allow && !holder && deps.remoteReach && session.identity.role === 'operator') return connectRemote(deps, session, reply, info.destPort, deps.remoteReach);
  if (!reach.allow) return refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, reach.reason, target);
  const deviceId = holder!.deviceId; // authorizeReach allows only a port some session holds
  // Who reached which device: the target is the device, the certificate (key id, serial) links to its issuance audit.
  deps.audit({
    actor: actorOf(session.identity), action: 'ssh.reach', target: deviceId, remoteAddr: session.remoteAddr, outcome: 'allowed',
    details: { deviceId, port: info.destPort, keyId: session.identity.keyId, serial: session.identity.serial.toString() },
  });
  relayToTunnel(session, reply, info.destPort);
}

/**
 * PORT of the operator certificate's device through the node that holds its
 * tunnel; refused with that node's code (DEVICE_OFFLINE, …) otherwise.
 * Confirmed only once the far end is connected, as relayToTunnel does.
 */
function connectRemote(deps: ChannelDeps, session: GatewaySession, reply: ChannelReply, port: number, remoteReach: NonNullable<GatewayDeps['remoteReach']>): void {
  const { identity } = session;
  const target = `${TUNNEL_HOST}:${port}`;
  remoteReach(identity.deviceId, port, { address: session.remoteAddr, port: 0 }).then(
    (stream) => {
      if (session.closed) {
        stream.destroy();
        return reply.reject();
      }
      deps.audit({
        actor: actorOf(identity), action: 'ssh.reach', target: identity.deviceId, remoteAddr: session.remoteAddr, outcome: 'allowed',
        details: { deviceId: identity.deviceId, port, keyId: identity.keyId, serial: identity.serial.toString(), via: 'relay' },
      });
      session.directRelays.add(stream);
      stream.once('close', () => session.directRelays.delete(stream));
      relay(stream, reply.accept());
    },
    (err: unknown) => {
      const code = (err as { code?: unknown }).code;
      refuseChannel(deps, session, DIRECT_TCPIP, reply.reject, typeof code === 'string' && /^[A-Z_]{1,40}$/.test(code) ? code : 'INTERNAL_ERROR', target);
    },
  );
}

/** Connects to 127.0.0.1:PORT and relays it over the channel, confirmed only once the connection exists, as sshd does. */
function relayToTunnel(session: GatewaySession, reply: ChannelReply, port: number): void {
  const socket = createConnection({ host: TUNNEL_HOST, port, allowHalfOpen: true });
  socket.on('error', () => undefined);
  session.directRelays.add(socket);
  socket.once('close', () => session.directRelays.delete(socket));
  let opened = false;
  socket.once('connect', () => {
    if (session.closed) return socket.destroy();
    opened = true;
    relay(socket, reply.accept());
  });
  socket.once('close', () => {
    if (!opened) reply.reject();
  });
}
