/**
 * Opening and closing a tunnel without trusting the transport to keep its
 * own timeouts: the run loop must never wait forever on a dialer, whether
 * it is connecting, stopping or closing.
 */
import type { Clock } from './clock.js';
import { TransportError, type Transport, type Tunnel, type TunnelSpec } from './transport.js';

/** How long closing a tunnel may take before the agent moves on. */
const CLOSE_TIMEOUT_MS = 10_000;

/** The tunnel the agent holds: the certificate it was opened with, and since when. */
export interface HeldTunnel {
  readonly tunnel: Tunnel;
  readonly serial: bigint;
  /** Clock ms. */
  readonly connectedAt: number;
}

export interface OpenGuards {
  readonly clock: Clock;
  /** Aborted by stop(): the transport gives up its attempt. */
  readonly signal: AbortSignal;
  /** Settles a little after stop(), for a transport that ignores SIGNAL. */
  readonly stopGrace: Promise<void>;
}

/**
 * transport.open(), but never waiting forever on it: a transport that
 * neither connects nor fails within its own timeouts (a bug, a wedged
 * child) is given up on, and whatever it opens later is closed.
 */
export async function openTunnel(transport: Transport, spec: TunnelSpec, guards: OpenGuards): Promise<Tunnel> {
  const { clock } = guards;
  const opening = transport.open(spec, guards.signal);
  let timer: unknown = null;
  const deadline = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(() => reject(new TransportError('TIMEOUT', 'the transport did not answer in time')), spec.connectTimeoutMs * 3 + 5000);
  });
  const stopped = guards.stopGrace.then(() => {
    throw new TransportError('CLOSED', 'stopped');
  });
  try {
    return await Promise.race([opening, deadline, stopped]);
  } catch (err) {
    opening.then((late) => late.close(), () => undefined).catch(() => undefined);
    throw err;
  } finally {
    clock.clearTimeout(timer);
  }
}

/** Closes TUNNEL, waiting at most CLOSE_TIMEOUT_MS; never rejects. */
export async function closeTunnel(tunnel: Tunnel, clock: Clock): Promise<void> {
  let timer: unknown = null;
  const giveUp = new Promise<void>((resolve) => {
    timer = clock.setTimeout(resolve, CLOSE_TIMEOUT_MS);
  });
  await Promise.race([tunnel.close().catch(() => undefined), giveUp]);
  clock.clearTimeout(timer);
}
