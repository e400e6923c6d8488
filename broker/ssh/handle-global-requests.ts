/**
 * A session's global requests (RFC 4254 section 4): a device's tcpip-forward
 * and cancel-tcpip-forward (section 7.1); every other request is refused.
 * The decisions are authorize.ts's (authorizeGlobalRequest, authorizeForward,
 * and authorizeTakeover when the port is held); this module reserves the
 * port, ends a session it takes the port over from, and binds the listener
 * (forwards.ts). Every refusal is counted, logged and audited (ssh.forward,
 * outcome refused).
 */
import { authorizeForward, authorizeGlobalRequest, authorizeTakeover, type ForwardRequest } from './authorize.js';
import { RemoteForward } from './forwards.js';
import { actorOf, type SessionRegistry } from './registry.js';
import type { GatewaySession } from './session.js';
import type { GatewayCounters } from './stats.js';
import type { AuditEvent, GatewayLogger } from './types.js';

export interface ForwardRequestDeps {
  readonly registry: SessionRegistry;
  readonly counters: GatewayCounters;
  readonly logger: GatewayLogger;
  audit(event: AuditEvent): void;
}

/** ssh2's callbacks for one global request; undefined when the client asked for no reply. */
export interface RequestReply {
  readonly accept: ((port?: number) => void) | undefined;
  readonly reject: (() => void) | undefined;
}

/**
 * Answers global request NAME of SESSION. Rejects only on an unexpected
 * error, which the caller logs before refusing the request.
 */
export async function handleGlobalRequest(
  deps: ForwardRequestDeps,
  session: GatewaySession,
  name: string,
  info: ForwardRequest,
  reply: RequestReply,
): Promise<void> {
  if (session.closed) return reply.reject?.();
  const allowed = authorizeGlobalRequest(name);
  if (!allowed.allow) return refuseForward(deps, session, allowed.reason, name, reply);
  if (name === 'cancel-tcpip-forward') return cancelForward(deps, session, info.bindPort, reply);
  return openForward(deps, session, info, reply);
}

function refuseForward(deps: ForwardRequestDeps, session: GatewaySession, reason: string, target: string, reply: RequestReply): void {
  deps.counters.forwardRefused(reason);
  const { identity } = session;
  deps.logger.warn({ sessionId: session.id, actor: actorOf(identity), target, reason }, 'ssh forward refused');
  deps.audit({ actor: actorOf(identity), action: 'ssh.forward', target, remoteAddr: session.remoteAddr, outcome: 'refused', details: { reason } });
  reply.reject?.();
}

async function cancelForward(deps: ForwardRequestDeps, session: GatewaySession, port: number, reply: RequestReply): Promise<void> {
  const forward = session.forwards.get(port);
  if (!forward) return reply.reject?.();
  session.forwards.delete(port);
  deps.registry.release(port, session);
  await forward.close();
  reply.accept?.();
}

async function openForward(deps: ForwardRequestDeps, session: GatewaySession, info: ForwardRequest, reply: RequestReply): Promise<void> {
  const { registry } = deps;
  const target = `${info.bindAddr}:${info.bindPort}`;
  const decision = authorizeForward(session.identity.principal, info);
  if (!decision.allow) return refuseForward(deps, session, decision.reason, target, reply);
  const port = info.bindPort;
  const holder = registry.owner(port);
  if (holder) {
    const takeover = authorizeTakeover(session, holder);
    if (!takeover.allow) return refuseForward(deps, session, takeover.reason, target, reply);
  }
  // The stale session lets go of its listeners first; the port is ours meanwhile.
  const previous = holder ? registry.end(holder, 'TAKEOVER') : undefined;
  registry.reserve(port, session);
  let forward: RemoteForward;
  try {
    await previous;
    forward = await RemoteForward.open({ conn: session.conn, bindAddr: info.bindAddr, port, bytes: deps.counters.bytes });
  } catch (err) {
    registry.release(port, session);
    deps.logger.warn({ sessionId: session.id, port, err: (err as NodeJS.ErrnoException).code ?? String(err) }, 'ssh forward bind failed');
    return refuseForward(deps, session, 'BIND_FAILED', target, reply);
  }
  if (session.closed || registry.owner(port) !== session) {
    // Revoked, taken over or gone while binding: give the port back.
    registry.release(port, session);
    await forward.close();
    return reply.reject?.();
  }
  session.forwards.set(port, forward);
  deps.logger.info({ sessionId: session.id, actor: actorOf(session.identity), target, takeover: holder !== undefined }, 'ssh forward listening');
  reply.accept?.();
}
