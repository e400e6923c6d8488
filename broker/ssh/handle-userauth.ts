/**
 * User authentication of one connection (RFC 4252), the shell around
 * userauth.ts: ssh2's AuthContext goes to decideUserauth, its decision goes back
 * to the client. Every refusal is counted, logged and audited (ssh.auth,
 * outcome refused) with its reason while the client sees only the plain SSH
 * failure; a connection is dropped after maxAuthAttempts refusals (sshd
 * MaxAuthTries) or when its login grace time runs out (AUTH_TIMEOUT), and
 * a valid certificate is refused while its device already holds
 * maxSessionsPerCertificate sessions (TOO_MANY_SESSIONS).
 */
import type { Socket } from 'node:net';
import type { AuthContext, Connection } from 'ssh2';
import { decideUserauth, type AuthDecision, type AuthRefusal } from './userauth.js';
import type { CertificateCheckDeps, Identity } from './authorize.js';
import { truncate } from './peer-text.js';
import type { GatewayCounters } from './stats.js';
import type { AuditEvent, GatewayLogger } from './types.js';

/** One connection until it has authenticated, as this phase sees it. */
export interface Authenticating {
  readonly socket: Socket;
  readonly remoteAddr: string;
  conn?: Connection;
  /** Refused attempts so far. */
  failures: number;
  /** Set by a successful signature check, just before ssh2 emits "ready". */
  identity?: Identity;
}

export interface AuthenticationDeps {
  readonly clock: () => Date;
  readonly certDeps: CertificateCheckDeps;
  readonly counters: GatewayCounters;
  readonly logger: GatewayLogger;
  audit(event: AuditEvent): void;
  readonly maxAuthAttempts: number;
  /** Sessions IDENTITY's device (or operator certificate) holds now, and how many it may. */
  sessionsOf(identity: Identity): number;
  readonly maxSessionsPerCertificate: number;
}

/** Answers one SSH_MSG_USERAUTH_REQUEST. */
export function handleUserauth(deps: AuthenticationDeps, state: Authenticating, ctx: AuthContext): void {
  const decision = decide(deps, state, ctx);
  switch (decision.kind) {
    case 'list-methods':
      ctx.reject(['publickey']);
      return;
    case 'key-acceptable':
      // SSH_MSG_USERAUTH_PK_OK: the client may now sign (RFC 4252 section 7).
      ctx.accept();
      return;
    case 'accept':
      if (deps.sessionsOf(decision.identity) >= deps.maxSessionsPerCertificate) {
        // Checked here, not once the session exists: ssh2 emits "ready" within accept(), so the count is exact.
        ctx.reject(['publickey']);
        const { keyId, serial } = decision.identity;
        refuseUserauth(deps, state, 'TOO_MANY_SESSIONS', { claimed: { keyId, serial }, method: ctx.method, drop: true });
        return;
      }
      deps.counters.signature(decision.signatureForm);
      state.identity = decision.identity;
      ctx.accept();
      return;
    case 'refuse':
      ctx.reject(['publickey']);
      refuseUserauth(deps, state, decision.reason, { claimed: decision.claimed, method: ctx.method });
      return;
  }
}

function decide(deps: AuthenticationDeps, state: Authenticating, ctx: AuthContext): AuthDecision {
  try {
    return decideUserauth(
      ctx.method === 'publickey'
        ? { method: ctx.method, keyAlgo: ctx.key.algo, keyBlob: ctx.key.data, signature: ctx.signature, signedData: ctx.blob }
        : { method: ctx.method },
      deps.clock(),
      deps.certDeps,
    );
  } catch (err) {
    // An injected dependency (isRevoked, clock) failed: fail closed.
    deps.logger.error({ err, remoteAddr: state.remoteAddr }, 'ssh authentication check failed');
    return { kind: 'refuse', reason: 'INTERNAL_ERROR' };
  }
}

export interface RefusalOptions {
  /** The unverified key id and serial of the certificate presented, if it could be read. */
  readonly claimed?: { readonly keyId: string; readonly serial: bigint } | undefined;
  /** End the connection now (AUTH_TIMEOUT, TOO_MANY_ATTEMPTS) instead of letting the client try again. */
  readonly drop?: boolean;
  /** The method the client tried. */
  readonly method?: string;
}

/** Counts, logs and audits a refusal; drops the connection when asked to or when it has used up its attempts. */
export function refuseUserauth(deps: AuthenticationDeps, state: Authenticating, reason: AuthRefusal, options: RefusalOptions = {}): void {
  const { claimed, drop = false, method } = options;
  deps.counters.authFailure(reason);
  const details: Record<string, unknown> = { reason };
  if (method) details.method = method;
  if (claimed) {
    details.claimedKeyId = truncate(claimed.keyId);
    details.serial = claimed.serial.toString();
  }
  deps.logger.warn({ remoteAddr: state.remoteAddr, ...details }, 'ssh authentication refused');
  deps.audit({ actor: 'unauthenticated', action: 'ssh.auth', remoteAddr: state.remoteAddr, outcome: 'refused', details });
  state.failures += 1;
  if (!drop && state.failures >= deps.maxAuthAttempts) {
    refuseUserauth(deps, state, 'TOO_MANY_ATTEMPTS', { drop: true });
    return;
  }
  if (drop) {
    if (state.conn) state.conn.end();
    state.socket.destroy();
  }
}
