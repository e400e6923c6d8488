/**
 * The certificate the agent holds and its renewal, in the background of
 * the tunnel: a timer at the certificate's renewal time (renewer.ts draws
 * it once per certificate), one renewal at a time, and after a transient
 * failure a retry with backoff (renewBackoff) that never touches the
 * working tunnel. The run loop also renews through here, in the foreground,
 * when the certificate is already due or the SSH server refused it.
 *
 * What a failed renewal means is renewalVerdict(), a pure rule: the broker
 * revoked the device, or will never renew this identity again (the agent
 * stops), or anything else (retry).
 */
import { nextDelay } from './backoff.js';
import { MAX_TIMER_MS, type Clock } from './clock.js';
import type { AgentConfig } from './config.js';
import { EXIT, RENEW_FATAL_CODES } from './errors.js';
import type { AgentLogger } from './logger.js';
import type { ApiCall } from '../api/index.js';
import { renewCertificate, renewalDueAt, suggestedRenewal, validityOf } from './renewer.js';
import type { AgentState, AgentStateMachine } from './state-machine.js';
import { loadEnrollment, type BrokerApiRef, type Enrollment } from './state-dir.js';
import { sameTrust, trustCounts, type TrustOutcome } from './trust-set.js';

/** How the agent ends after the broker's last word on its certificate. */
export interface Verdict {
  readonly state: 'revoked' | 'closed';
  /** The process exit status (errors.ts EXIT). */
  readonly status: number;
  readonly code: string;
  readonly message: string;
}

/** ok: a fresh certificate is in place; verdict: the agent must stop (see RenewalSchedule.verdict); transient: retry later. */
export type RenewOutcome = { kind: 'ok' } | { kind: 'verdict' } | { kind: 'transient'; code: string };

/** The verdict a renewal failing with CODE carries, or null when it is worth retrying. */
export function renewalVerdict(code: string, message: string): Verdict | null {
  if (code === 'DEVICE_REVOKED') return { state: 'revoked', status: EXIT.REVOKED, code, message: 'the broker revoked this device' };
  if (RENEW_FATAL_CODES.includes(code)) return { state: 'closed', status: EXIT.REFUSED, code, message: `${message} (re-enroll the device)` };
  return null;
}

export interface RenewalDeps {
  readonly config: AgentConfig;
  readonly clock: Clock;
  readonly random: () => number;
  readonly api: ApiCall;
  readonly log: AgentLogger;
  /** Read only: no background renewal in the foreground states, nothing once the agent has ended. */
  readonly machine: AgentStateMachine;
  /** Records a failure for status.json and Agent.lastError. */
  readonly recordError: (code: string, message: string) => void;
  /** Wakes the run loop: a background renewal brought a fresh certificate or a verdict. */
  readonly wake: () => void;
}

/** States in which the run loop itself renews (or is about to): the timer leaves them alone. */
const FOREGROUND_STATES: readonly AgentState[] = ['renewing', 'enrolling', 'initial'];

export class RenewalSchedule {
  readonly #deps: RenewalDeps;
  #enrollment: Enrollment | null = null;
  /** When the current certificate is due for renewal (clock ms), drawn once per certificate. */
  #dueAt = 0;
  #timer: unknown = null;
  #attempt = 0;
  #inFlight: Promise<RenewOutcome> | null = null;
  #verdict: Verdict | null = null;

  constructor(deps: RenewalDeps) {
    this.#deps = deps;
  }

  get enrollment(): Enrollment | null {
    return this.#enrollment;
  }

  /** The broker's last word, once a renewal has heard it. */
  get verdict(): Verdict | null {
    return this.#verdict;
  }

  /** Takes ENROLLMENT as the one in use and draws its renewal time. */
  adopt(enrollment: Enrollment | null): void {
    this.#enrollment = enrollment;
    if (enrollment) this.#dueAt = renewalDueAt(validityOf(enrollment.certificate), suggestedRenewal(enrollment), this.#deps.random);
  }

  isDue(): boolean {
    return this.#deps.clock.now() >= this.#dueAt;
  }

  isExpired(): boolean {
    return this.#deps.clock.now() >= validityOf(this.#enrollment!.certificate).validBefore;
  }

  /** Arms the background renewal timer for AT (default: the certificate's renewal time). */
  schedule(at?: number): void {
    const { clock, machine } = this.#deps;
    clock.clearTimeout(this.#timer);
    const due = at ?? this.#dueAt;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, due - clock.now()));
    this.#timer = clock.setTimeout(() => {
      this.#timer = null;
      if (machine.terminal) return;
      if (clock.now() < due) return this.schedule(due); // a timer longer than setTimeout allows
      void this.#renewInBackground();
    }, delay);
  }

  /** Disarms the timer (the agent is ending). */
  cancel(): void {
    this.#deps.clock.clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** One renewal (single flight). Adopts the fresh certificate and re-arms the timer on success; records a verdict for revoked/fatal. */
  renew(): Promise<RenewOutcome> {
    this.#inFlight ??= this.#renewOnce().finally(() => {
      this.#inFlight = null;
    });
    return this.#inFlight;
  }

  /**
   * After a transient renewal failure: retry in the background with backoff
   * (renewBackoff, capped). Before expiry the tunnel is untouched; after it
   * the embedded gateway has closed the session (the run loop then renews
   * in the foreground), while an sshd keeps it, so retries go on.
   */
  retryLater(code: string): void {
    const { clock, config, log, machine } = this.#deps;
    const retryIn = nextDelay(this.#attempt, config.renewBackoff, this.#deps.random);
    this.#attempt += 1;
    const expired = this.isExpired();
    log.warn({ event: 'renew_failed', code, retryInMs: retryIn, state: machine.state, expired }, 'renewal failed; the tunnel is kept, retrying');
    this.schedule(clock.now() + Math.max(1, retryIn));
  }

  async #renewInBackground(): Promise<void> {
    if (FOREGROUND_STATES.includes(this.#deps.machine.state)) return;
    const outcome = await this.renew();
    if (outcome.kind === 'transient') return this.retryLater(outcome.code);
    this.#deps.wake();
  }

  async #renewOnce(): Promise<RenewOutcome> {
    const { clock, config, log } = this.#deps;
    const enrollment = this.#enrollment!;
    try {
      const { grant, trust } = await renewCertificate({
        enrollment, broker: this.#broker(), timeoutMs: config.apiTimeoutSeconds * 1000, api: this.#deps.api, now: new Date(clock.now()),
      });
      this.adopt((await loadEnrollment(config.stateDir)) ?? enrollment);
      this.#logTrust(enrollment, trust);
      this.#attempt = 0;
      this.schedule();
      log.info({ event: 'renewed', serial: grant.serial, validBefore: grant.validBefore, renewAt: new Date(this.#dueAt).toISOString() }, 'certificate renewed');
      return { kind: 'ok' };
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      this.#deps.recordError(code, message);
      const verdict = renewalVerdict(code, message);
      if (!verdict) return { kind: 'transient', code };
      this.#verdict = verdict;
      return { kind: 'verdict' };
    }
  }

  /** One line when the stored trust set changed (counts, never the keys), or when the broker's was refused. */
  #logTrust(before: Enrollment, outcome: TrustOutcome): void {
    const { log } = this.#deps;
    if (outcome.refused) {
      log.warn({ event: 'trust_refused', code: outcome.refused.code, message: outcome.refused.message }, 'the broker sent a malformed trust set; the previous one is kept');
      return;
    }
    if (sameTrust(before.state.trust, outcome.trust)) return;
    const now = this.#enrollment!.state;
    const pin = this.#broker().pin;
    log.info({
      event: 'trust_changed', from: trustCounts(before.state.ssh, before.state.trust, pin), to: trustCounts(now.ssh, now.trust, pin),
      trustSet: outcome.trust !== undefined,
    }, outcome.trust ? 'the broker\'s trust set changed' : 'the broker sent no trust set; trusting its ssh host key and host CA alone');
  }

  /** The broker as the config names it, else as the enrollment recorded it. */
  #broker(): BrokerApiRef {
    const { broker } = this.#deps.config;
    return broker ? { url: broker.url, pin: broker.pin } : this.#enrollment!.state.broker;
  }
}
