/**
 * The agent's supervisor: wires enrollment, renewal and a transport into the
 * state machine, with the clock, randomness, API client and dialer
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
 * revoked).
 */
import { apiRequest } from '../api/client.js';
import { nextDelay } from './backoff.js';
import type { AgentConfig } from './config.js';
import { enrollDevice } from './enroll.js';
import { AgentError, EXIT, RENEW_FATAL_CODES } from './errors.js';
import { renewCertificate, renewalDueAt, suggestedRenewal, validityOf, type ApiCall } from './renewer.js';
import { AgentStateMachine, type AgentState, type StateChange } from './state-machine.js';
import { loadEnrollment, pinnedHostKey, writeStatus, type BrokerApiRef, type Enrollment } from './state-dir.js';
import { TransportError, type ForwardSpec, type Transport, type Tunnel, type TunnelSpec } from './transport.js';

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface AgentLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

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

type RenewOutcome =
  | { kind: 'ok' }
  | { kind: 'revoked'; message: string }
  | { kind: 'fatal'; code: string; message: string }
  | { kind: 'transient'; code: string; message: string };

/** A tunnel that stayed up this long resets the reconnect backoff. */
export const STABLE_CONNECTION_MS = 10_000;
/** How long stop() waits for a transport that ignores its abort signal. */
const STOP_GRACE_MS = 3000;
/** How long closing a tunnel may take before the agent moves on. */
const CLOSE_TIMEOUT_MS = 10_000;
/** setTimeout's limit; longer timers are re-armed when they fire. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class Agent {
  readonly machine: AgentStateMachine;
  readonly #config: AgentConfig;
  readonly #transport: Transport;
  readonly #log: AgentLogger;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #api: ApiCall;
  readonly #writeStatus: boolean;

  #enrollment: Enrollment | null = null;
  /** When the current certificate is due for renewal (clock ms), drawn once per certificate. */
  #dueAt = 0;
  #tunnel: Tunnel | null = null;
  #tunnelSerial: bigint | null = null;
  #connectedAt: number | null = null;
  #attempt = 0;
  #renewAttempt = 0;
  #afterBackoff: 'enrolling' | 'renewing' | 'connecting' = 'connecting';
  #renewedAfterRefusal = false;
  #renewTimer: unknown = null;
  #renewInFlight: Promise<RenewOutcome> | null = null;
  #stopRequested = false;
  #verdict: { state: 'revoked' | 'closed'; status: number; code: string; message: string } | null = null;
  #result: AgentResult | null = null;
  #wake: () => void = () => undefined;
  #abort = new AbortController();
  #stopped!: () => void;
  /** Resolves a little after stop(): how long a stop waits for a transport that ignores its abort signal. */
  readonly #stopGrace = new Promise<void>((resolve) => {
    this.#stopped = resolve;
  });
  #lastError: { code: string; message: string; at: number } | null = null;
  #statusChain: Promise<void> = Promise.resolve();
  #warnedServices = false;

  constructor(deps: AgentDeps) {
    this.#config = deps.config;
    this.#transport = deps.transport;
    this.#log = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#random = deps.random ?? Math.random;
    this.#api = deps.api ?? apiRequest;
    this.#writeStatus = deps.writeStatus ?? true;
    this.machine = new AgentStateMachine(() => this.#clock.now());
    this.machine.onChange((change) => this.#onChange(change));
  }

  get enrollment(): Enrollment | null {
    return this.#enrollment;
  }

  get lastError(): { code: string; message: string } | null {
    return this.#lastError;
  }

  /** Asks the agent to stop: the tunnel is closed and run() resolves with status 0. */
  stop(): void {
    if (this.#stopRequested) return;
    this.#stopRequested = true;
    this.#abort.abort();
    this.#wake();
    this.#clock.setTimeout(() => this.#stopped(), STOP_GRACE_MS);
  }

  /** Runs until revoked, stopped or a fatal error; never rejects. */
  async run(): Promise<AgentResult> {
    try {
      this.#setEnrollment(await loadEnrollment(this.#config.stateDir));
      while (!this.#result) await this.#step();
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown; exitCode?: unknown };
      const code = typeof e.code === 'string' ? e.code : 'INTERNAL';
      this.#log.error({ event: 'fatal', code, err: String(e.message ?? err) }, 'agent stopped by an error');
      this.#finish('closed', typeof e.exitCode === 'number' ? e.exitCode : EXIT.ERROR, code, String(e.message ?? err));
    } finally {
      this.#clock.clearTimeout(this.#renewTimer);
      this.#renewTimer = null;
      await this.#closeTunnel();
      await this.#statusChain;
    }
    return this.#result!;
  }

  // -------------------------------------------------------------------------
  // One handler per state.

  async #step(): Promise<void> {
    if (this.machine.terminal) return;
    if (this.#stopRequested && this.machine.state !== 'connected') return this.#finish('closed', EXIT.OK, 'STOPPED', 'stopped');
    if (this.#verdict && this.machine.state !== 'connected') return this.#applyVerdict();
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
    if (!this.#enrollment) {
      if (!this.#config.enroll.token) {
        return this.#finish('closed', EXIT.NOT_ENROLLED, 'NOT_ENROLLED', `${this.#config.stateDir} is not enrolled and no enrollment token is configured`);
      }
      if (!this.#config.broker) throw new AgentError('CONFIG_INVALID', 'config field broker: needed to enroll', EXIT.USAGE);
      this.machine.transition('enrolling', 'not enrolled yet');
      return;
    }
    this.#scheduleRenewal();
    if (this.#clock.now() >= this.#dueAt) this.machine.transition('renewing', 'certificate due or expired');
    else this.machine.transition('connecting', 'start');
  }

  async #enroll(): Promise<void> {
    const config = this.#config;
    try {
      const enrollment = await enrollDevice({
        stateDir: config.stateDir, broker: config.broker!, token: config.enroll.token!, name: config.enroll.name,
        hardwareSerial: config.enroll.hardwareSerial, timeoutMs: config.apiTimeoutSeconds * 1000,
        now: () => new Date(this.#clock.now()), api: this.#api,
      });
      this.#setEnrollment(enrollment);
    } catch (err) {
      if (err instanceof AgentError && err.exitCode === EXIT.REFUSED) {
        this.#recordError(err.code, err.message);
        this.#log.error({ event: 'enroll_refused', code: err.code }, `enrollment refused by the broker (${err.code}); a new token is needed`);
        return this.#finish('closed', EXIT.REFUSED, err.code, err.message);
      }
      const code = (err as { code?: string }).code ?? 'INTERNAL';
      if (code === 'ALREADY_ENROLLED' || code === 'ALREADY_RUNNING') throw err;
      this.#recordError(code, (err as Error).message);
      this.#log.warn({ event: 'enroll_failed', code }, 'enrollment failed; retrying');
      this.#afterBackoff = 'enrolling';
      this.machine.transition('backoff', code);
      return;
    }
    const { state } = this.#enrollment!;
    this.#log.info({ event: 'enrolled', deviceId: state.deviceId, ports: state.ports, serial: state.serial, validBefore: state.validBefore }, 'enrolled');
    this.#attempt = 0;
    this.#scheduleRenewal();
    this.machine.transition('connecting', 'enrolled');
  }

  async #renewForeground(): Promise<void> {
    const outcome = await this.#renew();
    if (outcome.kind === 'ok') {
      this.machine.transition('connecting', 'certificate renewed');
      return;
    }
    if (outcome.kind === 'revoked' || outcome.kind === 'fatal') return this.#applyVerdict();
    this.#retryRenewalLater(outcome.code);
    // The broker's API is unreachable (or busy): a certificate that is still
    // valid is worth a try; so is one the device's clock may misjudge.
    if (this.#clock.now() < this.#expiry() || outcome.code === 'REQUEST_STALE') {
      this.machine.transition('connecting', `renewal failed (${outcome.code}); certificate still usable`);
      return;
    }
    this.#afterBackoff = 'renewing';
    this.machine.transition('backoff', outcome.code);
  }

  async #connect(): Promise<void> {
    const enrollment = this.#enrollment!;
    const spec = this.#tunnelSpec(enrollment);
    if (spec.forwards.length === 0) {
      throw new AgentError('SERVICE_INVALID', 'no configured service fits in the port block', EXIT.USAGE);
    }
    let tunnel: Tunnel;
    try {
      tunnel = await this.#openGuarded(spec);
    } catch (err) {
      if (this.#stopRequested) return this.#finish('closed', EXIT.OK, 'STOPPED', 'stopped');
      const code = err instanceof TransportError ? err.code : 'PROTOCOL';
      const message = err instanceof Error ? err.message : String(err);
      this.#recordError(code, message);
      this.#log.warn({ event: 'connect_failed', code, message, transport: this.#transport.name }, 'tunnel could not be opened');
      if (code === 'AUTH_REFUSED' && !this.#renewedAfterRefusal) {
        // Expired, revoked, or the CA changed: the broker's API knows which.
        this.#renewedAfterRefusal = true;
        this.machine.transition('renewing', 'certificate refused by the SSH server');
        return;
      }
      this.#renewedAfterRefusal = false;
      this.#afterBackoff = 'connecting';
      this.machine.transition('backoff', code);
      return;
    }
    this.#renewedAfterRefusal = false;
    this.#tunnel = tunnel;
    this.#tunnelSerial = enrollment.certificate.serial;
    this.#connectedAt = this.#clock.now();
    this.machine.transition('connected', `serial ${enrollment.certificate.serial}`);
    this.#log.info({
      event: 'connected', transport: this.#transport.name, serial: enrollment.certificate.serial.toString(), host: spec.host, port: spec.port,
      forwards: spec.forwards.map((f) => `${f.name}:${f.remotePort}->${f.localHost}:${f.localPort}`),
    }, 'tunnel up');
  }

  /** Something for the connected state to act on: stop, a verdict, or a certificate newer than the tunnel's. */
  #pending(): boolean {
    return this.#stopRequested || this.#verdict !== null || this.#enrollment!.certificate.serial !== this.#tunnelSerial;
  }

  async #whileConnected(): Promise<void> {
    const tunnel = this.#tunnel!;
    let ended = null;
    if (!this.#pending()) {
      const woke = this.#sleep();
      ended = await Promise.race([tunnel.closed, woke.promise.then(() => null)]);
      woke.cancel();
    }
    const upForMs = this.#clock.now() - (this.#connectedAt ?? this.#clock.now());
    if (ended) {
      this.#tunnel = null;
      this.#recordError(ended.code, ended.message);
      this.#log.warn({ event: 'tunnel_lost', code: ended.code, message: ended.message, upForMs }, 'tunnel lost');
      if (upForMs >= STABLE_CONNECTION_MS) this.#attempt = 0;
      this.#afterBackoff = 'connecting';
      this.machine.transition('backoff', ended.code);
      return;
    }
    if (this.#stopRequested) {
      await this.#closeTunnel();
      return this.#finish('closed', EXIT.OK, 'STOPPED', 'stopped');
    }
    if (this.#verdict) {
      await this.#closeTunnel();
      return this.#applyVerdict();
    }
    if (this.#enrollment!.certificate.serial !== this.#tunnelSerial) {
      await this.#closeTunnel();
      this.#attempt = 0;
      this.machine.transition('connecting', 'reconnect with the renewed certificate');
    }
  }

  async #backoff(): Promise<void> {
    const delayMs = nextDelay(this.#attempt, this.#config.backoff, this.#random);
    this.#attempt += 1;
    this.#log.info({ event: 'backoff', attempt: this.#attempt, delayMs, next: this.#afterBackoff }, 'waiting before retrying');
    if (!this.#stopRequested && !this.#verdict) {
      const sleep = this.#sleep(delayMs);
      await sleep.promise;
      sleep.cancel();
    }
    if (this.#stopRequested || this.#verdict) return; // #step() handles both
    this.machine.transition(this.#afterBackoff, 'retry');
  }

  // -------------------------------------------------------------------------
  // Renewal

  #expiry(): number {
    return validityOf(this.#enrollment!.certificate).validBefore;
  }

  #setEnrollment(enrollment: Enrollment | null): void {
    this.#enrollment = enrollment;
    if (enrollment) this.#dueAt = renewalDueAt(validityOf(enrollment.certificate), suggestedRenewal(enrollment), this.#random);
  }

  #broker(): BrokerApiRef {
    return this.#config.broker ? { url: this.#config.broker.url, pin: this.#config.broker.pin } : this.#enrollment!.state.broker;
  }

  /** Arms the background renewal timer for AT (default: the certificate's renewal time). */
  #scheduleRenewal(at?: number): void {
    this.#clock.clearTimeout(this.#renewTimer);
    const due = at ?? this.#dueAt;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, due - this.#clock.now()));
    this.#renewTimer = this.#clock.setTimeout(() => {
      this.#renewTimer = null;
      if (this.machine.terminal) return;
      if (this.#clock.now() < due) return this.#scheduleRenewal(due); // a timer longer than setTimeout allows
      void this.#renewInBackground();
    }, delay);
  }

  async #renewInBackground(): Promise<void> {
    // In the foreground states the main loop renews (or is about to).
    if (['renewing', 'enrolling', 'initial'].includes(this.machine.state)) return;
    const outcome = await this.#renew();
    if (outcome.kind === 'transient') return this.#retryRenewalLater(outcome.code);
    this.#wake();
  }

  /**
   * After a transient renewal failure: retry in the background with backoff
   * (renewBackoff, capped). Before expiry the tunnel is untouched; after it
   * the embedded gateway has closed the session (the main loop then renews
   * in the foreground), while an sshd keeps it, so retries go on.
   */
  #retryRenewalLater(code: string): void {
    const retryIn = nextDelay(this.#renewAttempt, this.#config.renewBackoff, this.#random);
    this.#renewAttempt += 1;
    const expired = this.#clock.now() >= this.#expiry();
    this.#log.warn({ event: 'renew_failed', code, retryInMs: retryIn, state: this.machine.state, expired }, 'renewal failed; the tunnel is kept, retrying');
    this.#scheduleRenewal(this.#clock.now() + Math.max(1, retryIn));
  }

  /** One renewal (single flight). Updates the enrollment and the timer on success; records a verdict for revoked/fatal. */
  #renew(): Promise<RenewOutcome> {
    this.#renewInFlight ??= this.#renewOnce().finally(() => {
      this.#renewInFlight = null;
    });
    return this.#renewInFlight;
  }

  async #renewOnce(): Promise<RenewOutcome> {
    const enrollment = this.#enrollment!;
    try {
      const grant = await renewCertificate({
        enrollment, broker: this.#broker(), timeoutMs: this.#config.apiTimeoutSeconds * 1000, api: this.#api, now: new Date(this.#clock.now()),
      });
      this.#setEnrollment((await loadEnrollment(this.#config.stateDir)) ?? enrollment);
      this.#renewAttempt = 0;
      this.#scheduleRenewal();
      this.#log.info({ event: 'renewed', serial: grant.serial, validBefore: grant.validBefore, renewAt: new Date(this.#dueAt).toISOString() }, 'certificate renewed');
      return { kind: 'ok' };
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      this.#recordError(code, message);
      if (code === 'DEVICE_REVOKED') {
        this.#verdict = { state: 'revoked', status: EXIT.REVOKED, code, message: 'the broker revoked this device' };
        return { kind: 'revoked', message };
      }
      if (RENEW_FATAL_CODES.includes(code)) {
        this.#verdict = { state: 'closed', status: EXIT.REFUSED, code, message: `${message} (re-enroll the device)` };
        return { kind: 'fatal', code, message };
      }
      return { kind: 'transient', code, message };
    }
  }

  // -------------------------------------------------------------------------

  #tunnelSpec(enrollment: Enrollment): TunnelSpec {
    const { state, paths } = enrollment;
    const size = state.ports.last - state.ports.first + 1;
    const forwards: ForwardSpec[] = [];
    for (const s of this.#config.services) {
      if (s.slot < size) forwards.push({ name: s.name, remotePort: state.ports.first + s.slot, localHost: s.host, localPort: s.port });
      else if (!this.#warnedServices) this.#log.warn({ event: 'service_skipped', service: s.name, slot: s.slot, blockSize: size }, 'service slot outside the port block; not forwarded');
    }
    this.#warnedServices = true;
    return {
      host: state.ssh.host, port: state.ssh.port, username: state.ssh.username, bindAddress: this.#config.ssh.bindAddress,
      key: enrollment.key, keyPath: paths.key, certificateLine: enrollment.certificateLine, certificatePath: paths.certificate,
      hostKey: pinnedHostKey(state.ssh), knownHostsPath: paths.knownHosts, forwards,
      keepaliveIntervalMs: this.#config.keepalive.intervalSeconds * 1000, keepaliveCountMax: this.#config.keepalive.countMax,
      connectTimeoutMs: this.#config.connectTimeoutSeconds * 1000, pidFile: paths.sshPid,
    };
  }

  /** Resolves after MS (or never, without MS), or as soon as #wake() is called. */
  #sleep(ms?: number): { promise: Promise<void>; cancel(): void } {
    let timer: unknown = null;
    let done!: () => void;
    const promise = new Promise<void>((resolve) => {
      done = resolve;
    });
    this.#wake = done;
    if (ms !== undefined) timer = this.#clock.setTimeout(done, ms);
    return {
      promise,
      cancel: () => {
        this.#clock.clearTimeout(timer);
        if (this.#wake === done) this.#wake = () => undefined;
      },
    };
  }

  /**
   * transport.open(), but never waiting forever on it: a transport that
   * neither connects nor fails within its own timeouts (a bug, a wedged
   * child) is given up on, and whatever it opens later is closed.
   */
  async #openGuarded(spec: TunnelSpec): Promise<Tunnel> {
    const opening = this.#transport.open(spec, this.#abort.signal);
    let timer: unknown = null;
    const deadline = new Promise<never>((_, reject) => {
      timer = this.#clock.setTimeout(() => reject(new TransportError('TIMEOUT', 'the transport did not answer in time')), spec.connectTimeoutMs * 3 + 5000);
    });
    const stopped = this.#stopGrace.then(() => {
      throw new TransportError('CLOSED', 'stopped');
    });
    try {
      return await Promise.race([opening, deadline, stopped]);
    } catch (err) {
      opening.then((late) => late.close(), () => undefined).catch(() => undefined);
      throw err;
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }

  async #closeTunnel(): Promise<void> {
    const tunnel = this.#tunnel;
    this.#tunnel = null;
    if (!tunnel) return;
    let timer: unknown = null;
    const giveUp = new Promise<void>((resolve) => {
      timer = this.#clock.setTimeout(resolve, CLOSE_TIMEOUT_MS);
    });
    await Promise.race([tunnel.close().catch(() => undefined), giveUp]);
    this.#clock.clearTimeout(timer);
  }

  #applyVerdict(): void {
    const v = this.#verdict!;
    if (v.state === 'revoked') {
      this.#log.error({ event: 'revoked', code: v.code, deviceId: this.#enrollment?.state.deviceId }, 'device revoked by the broker; stopping for good');
    } else {
      this.#log.error({ event: 'refused', code: v.code }, `the broker will not renew this device (${v.code}); re-enroll it`);
    }
    this.#finish(v.state, v.status, v.code, v.message);
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
    if (!this.#writeStatus) return;
    const paths = this.#enrollment?.paths;
    if (!paths) return;
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    const status = {
      pid: process.pid,
      transport: this.#transport.name,
      state: change.to,
      since: iso(change.at)!,
      connectedSince: change.to === 'connected' ? iso(this.#connectedAt ?? change.at) : null,
      serial: this.#enrollment?.certificate.serial.toString() ?? null,
      lastError: this.#lastError ? { code: this.#lastError.code, message: this.#lastError.message, at: iso(this.#lastError.at)! } : null,
      updatedAt: iso(this.#clock.now())!,
    };
    this.#statusChain = this.#statusChain
      .then(() => writeStatus(paths, status))
      .catch((err: unknown) => this.#log.warn({ event: 'status_write_failed', err: String(err) }, 'could not write status.json'));
  }
}
