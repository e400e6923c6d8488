/**
 * Which SSH endpoint to dial, as a pure function of the list and the
 * injected random: a fresh shuffle for every round of attempts, so that a
 * fleet that lost one node spreads over the others instead of all trying
 * the same node first (and a dead node is not the first try every time).
 * A round ends when every endpoint in it failed; then the agent backs off.
 * After a tunnel drops, the next round leaves out the endpoint it was on:
 * the others are tried at once, and it comes back after the backoff.
 */
import type { SshAddressWire } from '../api/index.js';

function sameEndpoint(a: SshAddressWire, b: SshAddressWire): boolean {
  return a.host === b.host && a.port === b.port;
}

/**
 * ENDPOINTS in a uniformly random order (Fisher-Yates with RANDOM in [0, 1)),
 * without AVOID (the endpoint a tunnel just dropped from); empty when AVOID
 * was the only one.
 */
export function endpointRound(endpoints: readonly SshAddressWire[], random: () => number, avoid?: SshAddressWire): SshAddressWire[] {
  const order = endpoints.filter((e) => !avoid || !sameEndpoint(e, avoid)).map((e) => ({ host: e.host, port: e.port }));
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(random() * (i + 1)));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/**
 * The agent's walk through the endpoints: the round the next connection
 * attempt dials, the endpoint in use (for logs and status), and whether a
 * dropped tunnel may move on at once. It may once before a backoff: a node
 * (or a fleet) that drops every session right away must not make its
 * agents dial in a loop.
 */
export class EndpointRotation {
  readonly #random: () => number;
  #current: SshAddressWire | null = null;
  #next: SshAddressWire[] | null = null;
  #failedOver = false;

  constructor(random: () => number) {
    this.#random = random;
  }

  /** The endpoint of the tunnel up, or of the last attempt. */
  get current(): SshAddressWire | null {
    return this.#current;
  }

  /** The endpoints to dial in turn: after a drop the others, otherwise all of ENDPOINTS shuffled. */
  round(endpoints: readonly SshAddressWire[]): SshAddressWire[] {
    const round = this.#next ?? endpointRound(endpoints, this.#random);
    this.#next = null;
    return round;
  }

  dialing(endpoint: SshAddressWire): void {
    this.#current = endpoint;
  }

  /**
   * The tunnel on the current endpoint dropped: true when the agent should
   * dial the other ENDPOINTS at once (the next round() gives them), false
   * when it should back off. STABLE: the tunnel had been up long enough to
   * count as working, which allows a failover again.
   */
  failOver(endpoints: readonly SshAddressWire[], stable: boolean): boolean {
    if (stable) this.#failedOver = false;
    const dropped = this.#current;
    if (!dropped || this.#failedOver) return false;
    const others = endpointRound(endpoints, this.#random, dropped);
    if (others.length === 0) return false;
    this.#failedOver = true;
    this.#next = others;
    return true;
  }

  /** The agent backs off: the next drop may fail over at once again. */
  backedOff(): void {
    this.#failedOver = false;
    this.#next = null;
  }
}
