/**
 * One authenticated SSH connection: who it is (from its certificate), the
 * listeners it holds, and how it ends. The gateway decides when; this class
 * knows how to let go of everything at once.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Connection } from 'ssh2';
import { FOREVER } from '../../ca/index.js';
import type { Identity } from './authorize.js';
import type { RemoteForward } from './forwards.js';

/** setTimeout's ceiling (about 24.8 days); longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long a polite SSH_MSG_DISCONNECT may take before the socket is destroyed. */
const DISCONNECT_GRACE_MS = 2000;

export interface SessionInfo {
  readonly id: number;
  readonly role: Identity['role'];
  readonly deviceId: string;
  readonly keyId: string;
  readonly serial: bigint;
  readonly remoteAddr: string;
  readonly since: Date;
  /** When the certificate expires; undefined for a certificate valid forever. */
  readonly validBefore: Date | undefined;
  /** Ports this session listens on (devices only). */
  readonly ports: readonly number[];
}

export class GatewaySession {
  /** Listeners by port. */
  readonly forwards = new Map<number, RemoteForward>();
  /** Operators' direct-tcpip connections. */
  readonly directRelays = new Set<Duplex>();
  private expiryTimer: NodeJS.Timeout | undefined;
  private ending: Promise<void> | undefined;

  constructor(
    readonly id: number,
    readonly identity: Identity,
    readonly conn: Connection,
    readonly socket: Socket,
    readonly remoteAddr: string,
    readonly since: Date,
  ) {}

  get closed(): boolean {
    return this.ending !== undefined;
  }

  get deviceId(): string {
    return this.identity.deviceId;
  }

  info(): SessionInfo {
    const { validBefore } = this.identity;
    return {
      id: this.id,
      role: this.identity.role,
      deviceId: this.identity.deviceId,
      keyId: this.identity.keyId,
      serial: this.identity.serial,
      remoteAddr: this.remoteAddr,
      since: this.since,
      validBefore: validBefore === FOREVER ? undefined : new Date(Number(validBefore) * 1000),
      ports: [...this.forwards.keys()],
    };
  }

  /**
   * Calls onExpire once the certificate's valid_before has passed on CLOCK.
   * One timer per session; it is re-checked against the clock when it
   * fires, so a clock that runs differently from timers is still obeyed.
   */
  armExpiry(clock: () => Date, onExpire: () => void): void {
    const { validBefore } = this.identity;
    if (validBefore === FOREVER || this.closed) return;
    const delay = Number(validBefore) * 1000 - clock().getTime();
    if (delay <= 0) {
      onExpire();
      return;
    }
    this.expiryTimer = setTimeout(() => this.armExpiry(clock, onExpire), Math.min(delay, MAX_TIMER_MS));
    this.expiryTimer.unref();
  }

  /**
   * Closes the listeners and every relayed connection at once, then ends
   * the SSH connection: a polite disconnect, and the socket destroyed if the
   * peer does not go away. Idempotent; resolves when the ports are free.
   */
  close(): Promise<void> {
    this.ending ??= this.release();
    return this.ending;
  }

  private async release(): Promise<void> {
    clearTimeout(this.expiryTimer);
    for (const socket of this.directRelays) socket.destroy();
    const listeners = [...this.forwards.values()].map((f) => f.close());
    this.forwards.clear();
    if (!this.socket.destroyed) {
      this.conn.end();
      const grace = setTimeout(() => this.socket.destroy(), DISCONNECT_GRACE_MS);
      grace.unref();
      this.socket.once('close', () => clearTimeout(grace));
    }
    await Promise.all(listeners);
  }
}
