/**
 * The agent's life as an explicit state machine (Teleport's AgentState):
 * every state change goes through transition(), which refuses anything the
 * table below does not list. A refused transition is a bug in the
 * supervisor, so it throws instead of being ignored.
 *
 *   initial ──▶ enrolling ──▶ connecting ──▶ connected
 *      │            │  ▲           │  ▲          │
 *      │            ▼  │           ▼  │          ▼
 *      └──────▶ renewing ◀──────▶ backoff ◀──────┘
 *
 *   any live state ──▶ revoked (the broker said DEVICE_REVOKED) | closed (stopped, or a fatal error)
 *
 * Certificate renewal while connected is not a state: it runs beside the
 * tunnel and never takes it down; a fresh certificate moves
 * connected → connecting (reconnect with it).
 */

export const AGENT_STATES = ['initial', 'enrolling', 'renewing', 'connecting', 'connected', 'backoff', 'revoked', 'closed'] as const;

export type AgentState = (typeof AGENT_STATES)[number];

export const TRANSITIONS: Readonly<Record<AgentState, readonly AgentState[]>> = Object.freeze({
  // Start: enroll (not enrolled yet, a token is configured), renew first (the
  // certificate expired while the device was off), or dial.
  initial: ['enrolling', 'renewing', 'connecting', 'closed'],
  enrolling: ['connecting', 'backoff', 'closed'],
  renewing: ['connecting', 'backoff', 'revoked', 'closed'],
  // The SSH server refused the certificate, or presented a host key outside
  // the trust set: ask the broker (renewal answers with a fresh certificate
  // and the current trust set, or DEVICE_REVOKED).
  connecting: ['connected', 'backoff', 'renewing', 'revoked', 'closed'],
  // connected → connecting: reconnect with a freshly renewed certificate.
  connected: ['connecting', 'backoff', 'revoked', 'closed'],
  backoff: ['enrolling', 'renewing', 'connecting', 'revoked', 'closed'],
  revoked: [],
  closed: [],
});

const TERMINAL_STATES: readonly AgentState[] = ['revoked', 'closed'];

export class IllegalTransitionError extends Error {
  override name = 'IllegalTransitionError';
  readonly code = 'ILLEGAL_TRANSITION';
  constructor(
    readonly from: AgentState,
    readonly to: AgentState,
  ) {
    super(`illegal agent state transition ${from} -> ${to}`);
  }
}

export function canTransition(from: AgentState, to: AgentState): boolean {
  return TRANSITIONS[from].includes(to);
}

export interface StateChange {
  readonly from: AgentState;
  readonly to: AgentState;
  /** When the new state began (the injected clock's ms). */
  readonly at: number;
  /** Why, in a few words or an error code; never a secret. */
  readonly reason?: string;
}

export type StateListener = (change: StateChange) => void;

export class AgentStateMachine {
  #state: AgentState = 'initial';
  #since: number;
  readonly #listeners: StateListener[] = [];

  constructor(private readonly now: () => number) {
    this.#since = now();
  }

  get state(): AgentState {
    return this.#state;
  }

  /** When the current state began (clock ms). */
  get since(): number {
    return this.#since;
  }

  get terminal(): boolean {
    return TERMINAL_STATES.includes(this.#state);
  }

  /** Moves to TO, or throws IllegalTransitionError (and changes nothing). */
  transition(to: AgentState, reason?: string): StateChange {
    const from = this.#state;
    if (!canTransition(from, to)) throw new IllegalTransitionError(from, to);
    this.#state = to;
    this.#since = this.now();
    const change: StateChange = { from, to, at: this.#since, reason };
    for (const listener of this.#listeners) listener(change);
    return change;
  }

  onChange(listener: StateListener): () => void {
    this.#listeners.push(listener);
    return () => {
      const i = this.#listeners.indexOf(listener);
      if (i !== -1) this.#listeners.splice(i, 1);
    };
  }
}
