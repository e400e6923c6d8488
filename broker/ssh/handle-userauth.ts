/**
 * User authentication of one connection (RFC 4252), the shell around
 * userauth.ts: ssh2's AuthContext goes to decideUserauth, its decision goes back
 * to the client. Every refusal is counted, logged and audited (ssh.auth,
 * outcome refused) with its reason while the client sees only the plain SSH
 * failure; a connection is dropped after maxAuthAttempts refusals (sshd
 * MaxAuthTries) or when its login grace time runs out (AUTH_TIMEOUT), and
 * a valid certificate is refused while its device already holds
 * maxSessionsPerCertificate sessions (TOO_MANY_SESSIONS).
 *
 * A certificate that passes every check of its own is then looked up in the
 * store (acceptIfIssued, issued.ts): the answer to the client waits for the
 * lookup, and ssh2 holds the client's further requests until it comes.
 */
import type { Socket } from 'node:net';
import type { AuthContext, Connection } from 'ssh2';
import { decideUserauth, type AuthDecision, type AuthRefusal } from './userauth.js';
import type { CertificateCheckDeps, Decision, Identity } from './authorize.js';
import { checkIssued, type IssuedRefusal, type LookupIssued } from './issued.js';
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
  /** The store's record of a serial (issued.ts); without it every certificate the CA signed is believed. */
  readonly lookupIssued?: LookupIssued | undefined;
}

type Accepted = Extract<AuthDecision, { kind: 'accept' }>;

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
    case 'accept': {
      const { lookupIssued } = deps;
      if (!lookupIssued) return admit(deps, state, ctx, decision);
      acceptIfIssued(deps, state, ctx, decision, lookupIssued).catch((err: unknown) => {
        // admit() runs the session's start ("ready") synchronously: whatever that throws ends this connection only.
        deps.logger.error({ err, remoteAddr: state.remoteAddr }, 'ssh authentication failed');
        state.socket.destroy();
      });
      return;
    }
    case 'refuse':
      ctx.reject(['publickey']);
      refuseUserauth(deps, state, decision.reason, { claimed: decision.claimed, method: ctx.method });
      return;
  }
}

/** The last checks before the session starts: the device's session count, then ctx.accept(). */
function admit(deps: AuthenticationDeps, state: Authenticating, ctx: AuthContext, decision: Accepted): void {
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
}

/**
 * Accepts DECISION's certificate only if the store issued it as presented
 * (checkIssued). Fails closed: a lookup that throws refuses the login
 * (INTERNAL_ERROR), logged. The connection may close while the lookup is
 * pending (the client gave up, the login grace time ran out, the gateway
 * is closing): then nothing is answered on it, and a refusal is still
 * counted, logged and audited.
 */
export async function acceptIfIssued(
  deps: AuthenticationDeps,
  state: Authenticating,
  ctx: AuthContext,
  decision: Accepted,
  lookupIssued: LookupIssued,
): Promise<void> {
  const { identity } = decision;
  let verdict: Decision<IssuedRefusal | 'INTERNAL_ERROR'>;
  try {
    verdict = checkIssued(identity, await lookupIssued(identity.serial));
  } catch (err) {
    deps.logger.error({ err, remoteAddr: state.remoteAddr, serial: identity.serial.toString() }, 'ssh certificate store check failed');
    verdict = { allow: false, reason: 'INTERNAL_ERROR' };
  }
  const gone = state.socket.destroyed || !state.socket.writable;
  if (verdict.allow) {
    if (!gone) admit(deps, state, ctx, decision);
    return;
  }
  if (!gone) ctx.reject(['publickey']);
  const { keyId, serial } = identity;
  refuseUserauth(deps, state, verdict.reason, { claimed: { keyId, serial }, method: ctx.method, drop: gone });
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
