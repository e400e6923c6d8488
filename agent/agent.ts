/**
 * The agent's supervisor: the run loop that drives the state machine
 * (state-machine.ts), with the clock, randomness, API client and dialer
 * injected (tests drive time instead of sleeping).
 *
 * One handler per state; each does its work and makes exactly one
 * transition. Renewal normally runs beside the tunnel (a timer at about two
 * thirds of the certificate's life): success reconnects with the fresh
 * certificate, a transient failure is retried with backoff until the
 * certificate expires and never touches the working tunnel, DEVICE_REVOKED
 * stops the agent for good. Renewal runs in the foreground (state renewing)
 * only when the certificate is already due or expired (the device was
 * offline) or the SSH server refused it (to learn whether the device was
 * revoked), or no endpoint presented a host key the agent trusts (to learn
 * the broker's current trust set, trust-set.ts: a device offline through a
 * whole host-key rotation).
 *
 * The broker may name several SSH endpoints (the nodes of a fleet): each
 * round of connection attempts dials them in a random order (endpoints.ts)
 * and backs off only when all of them failed; a tunnel that drops moves on
 * to another endpoint at once, once, before backing off.
 *
 * The parts: renewal-schedule.ts (the certificate in use and its renewal,
 * the broker's verdict), tunnel-spec.ts (what to dial and which forwards
 * the port block implies), tunnel-session.ts (opening and closing without
 * waiting forever), status-writer.ts (status.json), clock.ts (time and the
 * run loop's wakeable sleep).
 *
 * Long file: one handler per state, each a few lines, and the transitions
 * they make read best side by side; what they call is already split out.
 */
import { type ApiCall, apiRequest, type SshAddressWire } from '../api/index.js';
import { nextDelay } from './backoff.js';
import { systemClock, WakeableSleep, type Clock } from './clock.js';
import type { AgentConfig } from './config.js';
import { enrollDevice } from './enroll.js';
import { EndpointRotation } from './endpoints.js';
import { AgentError, EXIT } from './errors.js';
import type { AgentLogger } from './logger.js';
import { RenewalSchedule } from './renewal-schedule.js';
import { AgentStateMachine, type AgentState, type StateChange } from './state-machine.js';
import { formatSshAddress, loadEnrollment, sshEndpointsOf, type Enrollment } from './state-dir.js';
import { runtimeStatus, StatusWriter, type RecordedError } from './status-writer.js';
import { forwardsFor, tunnelSpecFor } from './tunnel-spec.js';
import { closeTunnel, openTunnel, type HeldTunnel } from './tunnel-session.js';
import { TransportError, type ForwardSpec, type Transport, type Tunnel, type TunnelEnd } from './transport.js';

// The injected parts AgentDeps names, for callers that build one.
export type { Clock } from './clock.js';
export type { AgentLogger } from './logger.js';

export interface AgentDeps {
  readonly config: AgentConfig;
  readonly transport: Transport;
  readonly logger: AgentLogger;
  readonly clock?: Clock;
  readonly random?: () => number;
  readonly api?: ApiCall;
  /** Keep status.json up to date for `certunnel agent status` (default true). */
  readonly writeStatus?: boolean;
}

export interface AgentResult {
  /** The process exit status (errors.ts EXIT). */
  readonly status: number;
  readonly state: AgentState;
  readonly code: string;
  readonly message: string;
}

/** A tunnel that stayed up this long resets the reconnect backoff. */
export const STABLE_CONNECTION_MS = 10_000;
/** How long stop() waits for a transport that ignores its abort signal. */
const STOP_GRACE_MS = 3000;

/** The states the backoff state goes back to when its delay is over. */
type RetryState = 'enrolling' | 'renewing' | 'connecting';

export class Agent {
  readonly machine: AgentStateMachine;
  readonly #config: AgentConfig;
  readonly #transport: Transport;
  readonly #log: AgentLogger;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #api: ApiCall;
  readonly #writeStatus: boolean;
  readonly #renewal: RenewalSchedule;
  readonly #status: StatusWriter;
  readonly #sleep: WakeableSleep;
  readonly #endpoints: EndpointRotation;

  #held: HeldTunnel | null = null;
  #attempt = 0;
  #afterBackoff: RetryState = 'connecting';
  #renewedAfterRefusal = false;
  #stopRequested = false;
  #result: AgentResult | null = null;
  #abort = new AbortController();
  #stopped!: () => void;
  /** Resolves a little after stop(): how long a stop waits for a transport that ignores its abort signal. */
  readonly #stopGrace = new Promise<void>((resolve) => {
    this.#stopped = resolve;
  });
  #lastError: RecordedError | null = null;
  #warnedServices = false;

  constructor(deps: AgentDeps) {
    this.#config = deps.config;
    this.#transport = deps.transport;
    this.#log = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#random = deps.random ?? Math.random;
    this.#api = deps.api ?? apiRequest;
    this.#writeStatus = deps.writeStatus ?? true;
    this.#status = new StatusWriter(this.#log);
    this.#sleep = new WakeableSleep(this.#clock);
    this.#endpoints = new EndpointRotation(this.#random);
    this.machine = new AgentStateMachine(() => this.#clock.now());
    this.machine.onChange((change) => this.#onChange(change));
    this.#renewal = new RenewalSchedule({
      config: this.#config, clock: this.#clock, random: this.#random, api: this.#api, log: this.#log, machine: this.machine,
      recordError: (code, message) => this.#recordError(code, message),
      wake: () => this.#sleep.wake(),
    });
  }

  get enrollment(): Enrollment | null {
    return this.#renewal.enrollment;
  }

  get lastError(): { code: string; message: string } | null {
    return this.#lastError;
  }

  /** Asks the agent to stop: the tunnel is closed and run() resolves with status 0. */
  stop(): void {
    if (this.#stopRequested) return;
    this.#stopRequested = true;
    this.#abort.abort();
    this.#sleep.wake();
    this.#clock.setTimeout(() => this.#stopped(), STOP_GRACE_MS);
  }

  /** Runs until revoked, stopped or a fatal error; never rejects. */
  async run(): Promise<AgentResult> {
    try {
      this.#renewal.adopt(await loadEnrollment(this.#config.stateDir));
      while (!this.#result) await this.#step();
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown; exitCode?: unknown };
      const code = typeof e.code === 'string' ? e.code : 'INTERNAL';
      this.#log.error({ event: 'fatal', code, err: String(e.message ?? err) }, 'agent stopped by an error');
      this.#finish('closed', typeof e.exitCode === 'number' ? e.exitCode : EXIT.ERROR, code, String(e.message ?? err));
    } finally {
      this.#renewal.cancel();
      await this.#closeTunnel();
      await this.#status.settled();
    }
    return this.#result!;
  }

  // -------------------------------------------------------------------------
  // One handler per state.

  async #step(): Promise<void> {
    if (this.machine.terminal) return;
    // While connected, #whileConnected closes the tunnel first.
    if (this.#stopRequested && this.machine.state !== 'connected') return this.#finishStopped();
    if (this.#renewal.verdict && this.machine.state !== 'connected') return this.#applyVerdict();
    switch (this.machine.state) {
      case 'initial':
        return this.#start();
      case 'enrolling':
        return this.#enroll();
      case 'renewing':
        return this.#renewForeground();
      case 'connecting':
        return this.#connect();
      case 'connected':
        return this.#whileConnected();
      case 'backoff':
        return this.#backoff();
    }
  }

  #start(): void {
    if (!this.#renewal.enrollment) {
      if (!this.#config.enroll.token) {
        return this.#finish('closed', EXIT.NOT_ENROLLED, 'NOT_ENROLLED', `${this.#config.stateDir} is not enrolled and no enrollment token is configured: run certunnel agent enroll --url <broker> --pin <sha256//…> --token-file <file>, or give agent run --token-file <file> (or enroll.token in --config)`);
      }
      if (!this.#config.broker) throw new AgentError('CONFIG_INVALID', 'config field broker: needed to enroll', EXIT.USAGE);
      this.machine.transition('enrolling', 'not enrolled yet');
      return;
    }
    this.#renewal.schedule();
    if (this.#renewal.isDue()) this.machine.transition('renewing', 'certificate due or expired');
    else this.machine.transition('connecting', 'start');
  }

  async #enroll(): Promise<void> {
    const config = this.#config;
    try {
      const enrollment = await enrollDevice({
        stateDir: config.stateDir, broker: config.broker!, token: config.enroll.token!, name: config.enroll.name,
        hardwareSerial: config.enroll.hardwareSerial, timeoutMs: config.apiTimeoutSeconds * 1000,
        now: () => new Date(this.#clock.now()), api: this.#api, log: this.#log,
      });
      this.#renewal.adopt(enrollment);
    } catch (err) {
      return this.#onEnrollFailed(err);
    }
    const { state } = this.#renewal.enrollment!;
    this.#log.info({ event: 'enrolled', deviceId: state.deviceId, ports: state.ports, serial: state.serial, validBefore: state.validBefore }, 'enrolled');
    this.#attempt = 0;
    this.#renewal.schedule();
    this.machine.transition('connecting', 'enrolled');
  }

  /** A refusal ends the agent (a new token is needed); a crowded state directory is fatal; anything else is retried. */
  #onEnrollFailed(err: unknown): void {
    if (err instanceof AgentError && err.exitCode === EXIT.REFUSED) {
      this.#recordError(err.code, err.message);
      this.#log.error({ event: 'enroll_refused', code: err.code }, `enrollment refused by the broker (${err.code}); a new token is needed`);
      return this.#finish('closed', EXIT.REFUSED, err.code, err.message);
    }
    const code = (err as { code?: string }).code ?? 'INTERNAL';
    if (code === 'ALREADY_ENROLLED' || code === 'ALREADY_RUNNING') throw err;
    this.#recordError(code, (err as Error).message);
    this.#log.warn({ event: 'enroll_failed', code }, 'enrollment failed; retrying');
    this.#backOffThen('enrolling', code);
  }

  async #renewForeground(): Promise<void> {
    const outcome = await this.#renewal.renew();
    if (outcome.kind === 'ok') {
      this.machine.transition('connecting', 'certificate renewed');
      return;
    }
    if (outcome.kind === 'verdict') return this.#applyVerdict();
    this.#renewal.retryLater(outcome.code);
    // The broker's API is unreachable (or busy): a certificate that is still
    // valid is worth a try; so is one the device's clock may misjudge.
    if (!this.#renewal.isExpired() || outcome.code === 'REQUEST_STALE') {
      this.machine.transition('connecting', `renewal failed (${outcome.code}); certificate still usable`);
      return;
    }
    this.#backOffThen('renewing', outcome.code);
  }

  /** One round: the endpoints in turn until a tunnel is up; a refused certificate or a stop ends the round early. */
  async #connect(): Promise<void> {
    const enrollment = this.#renewal.enrollment!;
    const forwards = this.#forwards(enrollment);
    if (forwards.length === 0) {
      throw new AgentError('SERVICE_INVALID', 'no configured service fits in the port block', EXIT.USAGE);
    }
    const round = this.#endpoints.round(sshEndpointsOf(enrollment.state));
    let failure: unknown = new TransportError('UNREACHABLE', 'no SSH endpoint to dial');
    let hostKeyMismatch = false;
    for (const [i, endpoint] of round.entries()) {
      this.#endpoints.dialing(endpoint);
      const spec = tunnelSpecFor(this.#config, enrollment, forwards, endpoint);
      let tunnel: Tunnel;
      try {
        tunnel = await openTunnel(this.#transport, spec, { clock: this.#clock, signal: this.#abort.signal, stopGrace: this.#stopGrace });
      } catch (err) {
        if (this.#stopRequested) return this.#finishStopped();
        failure = err;
        const code = this.#logConnectFailed(err, endpoint, round.length - i - 1);
        // The certificate, not the node: every endpoint checks it against the same CA and revocations.
        if (code === 'AUTH_REFUSED') break;
        hostKeyMismatch ||= code === 'HOST_KEY_MISMATCH';
        continue;
      }
      this.#renewedAfterRefusal = false;
      this.#held = { tunnel, serial: enrollment.certificate.serial, connectedAt: this.#clock.now() };
      this.machine.transition('connected', `serial ${enrollment.certificate.serial}`);
      this.#log.info({
        event: 'connected', transport: this.#transport.name, serial: enrollment.certificate.serial.toString(), host: spec.host, port: spec.port,
        endpoint: formatSshAddress(endpoint), forwards: spec.forwards.map((f) => `${f.name}:${f.remotePort}->${f.localHost}:${f.localPort}`),
      }, 'tunnel up');
      return;
    }
    return this.#onConnectFailed(hostKeyMismatch && !(failure instanceof TransportError && failure.code === 'AUTH_REFUSED')
      ? new TransportError('HOST_KEY_MISMATCH', 'no endpoint presented a host key the agent trusts') : failure);
  }

  /** Logs and records one failed attempt; returns its code. */
  #logConnectFailed(err: unknown, endpoint: SshAddressWire, left: number): string {
    const code = err instanceof TransportError ? err.code : 'PROTOCOL';
    const message = err instanceof Error ? err.message : String(err);
    this.#recordError(code, message);
    this.#log.warn({
      event: 'connect_failed', code, message, transport: this.#transport.name, endpoint: formatSshAddress(endpoint), endpointsLeft: left,
    }, left > 0 && code !== 'AUTH_REFUSED' ? 'tunnel could not be opened; trying another endpoint' : 'tunnel could not be opened');
    return code;
  }

  /** Every endpoint of the round failed (or the certificate was refused). */
  #onConnectFailed(err: unknown): void {
    const code = err instanceof TransportError ? err.code : 'PROTOCOL';
    if (code === 'AUTH_REFUSED' && !this.#renewedAfterRefusal) {
      // Expired, revoked, or the CA changed: the broker's API knows which.
      // Once only: a certificate refused again right after renewal backs off.
      this.#renewedAfterRefusal = true;
      this.machine.transition('renewing', 'certificate refused by the SSH server');
      return;
    }
    if (code === 'HOST_KEY_MISMATCH' && !this.#renewedAfterRefusal) {
      // A host key outside the stored trust set: a spoof, or a host-key
      // rotation the device slept through. Only the API (pinned on its own)
      // may say which: renewal brings the broker's current trust set. The
      // unknown key itself is never accepted.
      this.#renewedAfterRefusal = true;
      this.machine.transition('renewing', 'host key not in the trust set; asking the broker for its trust set');
      return;
    }
    this.#renewedAfterRefusal = false;
    this.#backOffThen('connecting', code);
  }

  /** Something for the connected state to act on: stop, a verdict, or a certificate newer than the tunnel's. */
  #pending(): boolean {
    return this.#stopRequested || this.#renewal.verdict !== null || this.#renewal.enrollment!.certificate.serial !== this.#held!.serial;
  }

  async #whileConnected(): Promise<void> {
    const held = this.#held!;
    let ended: TunnelEnd | null = null;
    if (!this.#pending()) {
      const woke = this.#sleep.sleep();
      ended = await Promise.race([held.tunnel.closed, woke.promise.then(() => null)]);
      woke.cancel();
    }
    if (ended) return this.#onTunnelLost(ended, this.#clock.now() - held.connectedAt);
    if (this.#stopRequested) {
      await this.#closeTunnel();
      return this.#finishStopped();
    }
    if (this.#renewal.verdict) {
      await this.#closeTunnel();
      return this.#applyVerdict();
    }
    if (this.#renewal.enrollment!.certificate.serial !== held.serial) {
      await this.#closeTunnel();
      this.#attempt = 0;
      this.machine.transition('connecting', 'reconnect with the renewed certificate');
    }
  }

  #onTunnelLost(ended: TunnelEnd, upForMs: number): void {
    this.#held = null;
    const dropped = this.#endpoints.current;
    this.#recordError(ended.code, ended.message);
    this.#log.warn({ event: 'tunnel_lost', code: ended.code, message: ended.message, upForMs, endpoint: dropped && formatSshAddress(dropped) }, 'tunnel lost');
    const stable = upForMs >= STABLE_CONNECTION_MS;
    if (stable) this.#attempt = 0;
    // The node may be gone: the other endpoints at once (once), then the backoff.
    if (this.#endpoints.failOver(sshEndpointsOf(this.#renewal.enrollment!.state), stable)) {
      this.machine.transition('connecting', `tunnel lost (${ended.code}); trying another endpoint`);
      return;
    }
    this.#backOffThen('connecting', ended.code);
  }

  async #backoff(): Promise<void> {
    const delayMs = nextDelay(this.#attempt, this.#config.backoff, this.#random);
    this.#attempt += 1;
    this.#log.info({ event: 'backoff', attempt: this.#attempt, delayMs, next: this.#afterBackoff }, 'waiting before retrying');
    if (!this.#stopRequested && !this.#renewal.verdict) {
      const sleep = this.#sleep.sleep(delayMs);
      await sleep.promise;
      sleep.cancel();
    }
    if (this.#stopRequested || this.#renewal.verdict) return; // #step() handles both
    this.machine.transition(this.#afterBackoff, 'retry');
  }

  // -------------------------------------------------------------------------

  #backOffThen(next: RetryState, reason: string): void {
    this.#afterBackoff = next;
    this.#endpoints.backedOff();
    this.machine.transition('backoff', reason);
  }

  /** The forwards ENROLLMENT's tunnel carries; a service outside the port block is skipped with a warning, once. */
  #forwards(enrollment: Enrollment): ForwardSpec[] {
    const { forwards, skipped } = forwardsFor(this.#config.services, enrollment.state.ports);
    if (!this.#warnedServices) {
      for (const s of skipped) this.#log.warn({ event: 'service_skipped', ...s }, 'service slot outside the port block; not forwarded');
    }
    this.#warnedServices = true;
    return forwards;
  }

  async #closeTunnel(): Promise<void> {
    const held = this.#held;
    this.#held = null;
    if (held) await closeTunnel(held.tunnel, this.#clock);
  }

  #applyVerdict(): void {
    const v = this.#renewal.verdict!;
    if (v.state === 'revoked') {
      this.#log.error({ event: 'revoked', code: v.code, deviceId: this.#renewal.enrollment?.state.deviceId }, 'device revoked by the broker; stopping for good');
    } else {
      this.#log.error({ event: 'refused', code: v.code }, `the broker will not renew this device (${v.code}); re-enroll it`);
    }
    this.#finish(v.state, v.status, v.code, v.message);
  }

  #finishStopped(): void {
    this.#finish('closed', EXIT.OK, 'STOPPED', 'stopped');
  }

  #finish(state: 'revoked' | 'closed', status: number, code: string, message: string): void {
    if (!this.machine.terminal) this.machine.transition(state, code);
    this.#result = { status, state, code, message };
  }

  #recordError(code: string, message: string): void {
    this.#lastError = { code, message, at: this.#clock.now() };
  }

  #onChange(change: StateChange): void {
    this.#log.info({ event: 'state', from: change.from, to: change.to, reason: change.reason }, `${change.from} -> ${change.to}`);
    const enrollment = this.#renewal.enrollment;
    if (!this.#writeStatus || !enrollment) return;
    this.#status.write(enrollment.paths, runtimeStatus(change, {
      transport: this.#transport.name, connectedAt: this.#held?.connectedAt ?? null, serial: enrollment.certificate.serial,
      endpoint: this.#endpoints.current && formatSshAddress(this.#endpoints.current),
      lastError: this.#lastError, now: this.#clock.now(),
    }));
  }
}
