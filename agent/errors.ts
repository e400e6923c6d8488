/**
 * The agent's errors carry a stable code (tests assert codes, never text)
 * and, for the CLI, the exit status they end the process with. Messages
 * never contain a token, a private key or a whole certificate.
 */
import type { ApiErrorCode, ErrorCode } from '../api/index.js';

/**
 * Exit statuses of `certunnel agent …` (also the POSIX shell agent's):
 * documented in README and in the systemd unit (RestartPreventExitStatus).
 */
export const EXIT = Object.freeze({
  /** Done (enroll, status), or `run` stopped by SIGTERM/SIGINT. */
  OK: 0,
  /** Anything unexpected: I/O, an unreachable broker for a one-shot command, an internal error. */
  ERROR: 1,
  /** Bad command line or invalid configuration. */
  USAGE: 3,
  /** `run` on a state directory that is not enrolled, with no token to enroll with. */
  NOT_ENROLLED: 4,
  /** The broker revoked this device: the agent stops for good. */
  REVOKED: 10,
  /**
   * The broker refused for good and a person must act: a bad, used, expired
   * or revoked token, a key or name it will not take, or an identity it no
   * longer renews (RENEWAL_GRACE_EXCEEDED, DEVICE_UNKNOWN): re-enroll.
   */
  REFUSED: 11,
});

/**
 * The agent's own codes, and those it passes on: an enrollment the broker
 * refused or that never reached it keeps the ApiError's code (enroll.ts).
 */
export type AgentErrorCode =
  /** A bad command line (cli/agent-commands.ts). */
  | 'BAD_ARGUMENT'
  | 'CONFIG_INVALID'
  /** How `run` ends on a state directory that is not enrolled, with no token (agent.ts). */
  | 'NOT_ENROLLED'
  | 'ALREADY_ENROLLED'
  | 'ALREADY_RUNNING'
  | 'STATE_INVALID'
  /** The broker's answer does not fit the request (another key, another block, another device). */
  | 'GRANT_INVALID'
  /** No configured service fits in the device's port block. */
  | 'SERVICE_INVALID'
  /** The broker sent a malformed trust set (trust-set.ts); the previous one is kept. */
  | 'TRUST_INVALID'
  | ApiErrorCode;

export class AgentError extends Error {
  override name = 'AgentError';
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    readonly exitCode: number = EXIT.ERROR,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Broker codes after which retrying the same enrollment can never succeed. */
export const ENROLL_FATAL_CODES: readonly string[] = [
  'TOKEN_UNKNOWN', 'TOKEN_USED', 'TOKEN_EXPIRED', 'TOKEN_REVOKED', 'TOKEN_BINDING_MISMATCH',
  'KEY_UNSUPPORTED', 'KEY_INVALID', 'KEY_ALREADY_ENROLLED', 'NAME_TAKEN', 'BAD_REQUEST',
] satisfies ErrorCode[];

/** Broker codes after which this identity can never be renewed again (a new enrollment is needed). */
export const RENEW_FATAL_CODES: readonly string[] = ['RENEWAL_GRACE_EXCEEDED', 'DEVICE_UNKNOWN'] satisfies ErrorCode[];
