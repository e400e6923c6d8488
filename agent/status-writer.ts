/**
 * status.json as the running agent reports it, for `certunnel agent status`
 * (status.ts reads it): rewritten at every state change, one write at a
 * time and in order, so that the file never goes back to an older state. A
 * failed write is logged, never fatal: the tunnel matters more than the
 * report of it.
 */
import type { AgentLogger } from './logger.js';
import type { StateChange } from './state-machine.js';
import { writeStatus, type RuntimeStatus, type StatePaths } from './state-dir.js';

/** The agent's last failure (clock ms), as status.json and Agent.lastError show it. */
export interface RecordedError {
  readonly code: string;
  readonly message: string;
  readonly at: number;
}

/** What the agent knows beside the state change itself. */
export interface StatusFacts {
  readonly transport: string;
  /** When the tunnel now up was opened (clock ms), if one is. */
  readonly connectedAt: number | null;
  readonly serial: bigint | null;
  /** "host:port" of the tunnel up, or of the last attempt. */
  readonly endpoint?: string | null;
  readonly lastError: RecordedError | null;
  /** Clock ms. */
  readonly now: number;
}

const iso = (ms: number): string => new Date(ms).toISOString();

export function runtimeStatus(change: StateChange, facts: StatusFacts): RuntimeStatus {
  const { lastError } = facts;
  return {
    pid: process.pid,
    transport: facts.transport,
    state: change.to,
    endpoint: facts.endpoint ?? null,
    since: iso(change.at),
    connectedSince: change.to === 'connected' ? iso(facts.connectedAt ?? change.at) : null,
    serial: facts.serial?.toString() ?? null,
    lastError: lastError ? { code: lastError.code, message: lastError.message, at: iso(lastError.at) } : null,
    updatedAt: iso(facts.now),
  };
}

export class StatusWriter {
  #chain: Promise<void> = Promise.resolve();

  constructor(private readonly log: AgentLogger) {}

  /** Queues STATUS for PATHS behind the writes before it. */
  write(paths: StatePaths, status: RuntimeStatus): void {
    this.#chain = this.#chain
      .then(() => writeStatus(paths, status))
      .catch((err: unknown) => this.log.warn({ event: 'status_write_failed', err: String(err) }, 'could not write status.json'));
  }

  /** Resolves once every queued write is done (or failed and logged). */
  settled(): Promise<void> {
    return this.#chain;
  }
}
