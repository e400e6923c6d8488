/**
 * Who may reach a device's HTTP service through the broker, and where it
 * is: the rules of the HTTP proxy (built in, or nginx's auth_request), free
 * of sockets.
 *
 * - Credentials: `Authorization: Bearer ctk_…` (an API key, for tools) or
 *   the broker's session cookie (a browser login). Roles admin, operator
 *   and proxy (a key that opens device pages only).
 * - Then the device by name: unknown → DEVICE_UNKNOWN, revoked →
 *   DEVICE_REVOKED, not connected → DEVICE_OFFLINE. Up front only with the
 *   embedded gateway, which knows the ports each tunnel holds; in OpenSSH
 *   mode this gets UNKNOWN_PRESENCE (no view per port), so the request goes
 *   on and a port nothing listens on answers DEVICE_OFFLINE, "since" the
 *   time OpenSSH-mode presence recorded in the store, or "moments ago"
 *   while the store still says connected (core/presence.ts, OfflineSince).
 * - Unauthenticated requests learn nothing about devices: authentication
 *   comes first.
 *
 * Every request hits this, so API keys and devices are cached briefly. A
 * cached key is checked on every use (apiKeyStatus: expiry needs no store
 * read), and a key revoked through the API is dropped from the caches
 * at once (forgetApiKey), so it fails on its next request, bearer or
 * session; a key revoked by another process (the local CLI on the store)
 * within KEY_CACHE_MS. A revoked device is dropped from the cache by the
 * revocation hook at once. Access
 * is audited once per (credential, device) per AUDIT_WINDOW_MS, logins and
 * refused credentials always.
 *
 * Guessing is slowed per client address (an IPv6 /64): a key that is not
 * in the cache is checked only while the address has failures left (config
 * proxy.authFailureBurst, refilled at authFailuresPerMinute); beyond that
 * the answer is RATE_LIMITED with the seconds to wait. Keys already known
 * good keep working from a limited address: only unknown keys are guesses.
 */
import { createHash } from 'node:crypto';
import { admitApiKey, apiKeyActor, apiKeyActorId, apiKeyStatus, authenticateApiKey } from '../core/api-keys.js';
import type { Actor, CoreDeps } from '../core/deps.js';
import { BrokerError, type ErrorCode } from '../core/errors.js';
import { ConnectionRateLimiter } from '../core/rate-limit.js';
import type { ApiKeyRecord, DeviceRecord } from '../store/types.js';
import { offlineSince, type OfflineSince, type TunnelPresence } from '../core/presence.js';
import { readCookie, SESSION_COOKIE, signSession, stripCookie, verifySession } from './session-cookie.js';
import { SLOT } from '../../api/index.js';

export const KEY_CACHE_MS = 5_000;
export const DEVICE_CACHE_MS = 2_000;
export const AUDIT_WINDOW_MS = 10 * 60_000;
const CACHE_MAX = 10_000;

const PROXY_ROLES = new Set(['admin', 'operator', 'proxy']);
/** Bearer refusals the proxy names as they are (after RATE_LIMITED); any other is UNAUTHENTICATED. */
const KEY_REFUSALS: ReadonlySet<ErrorCode> = new Set(['API_KEY_REVOKED', 'API_KEY_EXPIRED']);
/** Refusals of a presented key that spend one of its address's failures: a revoked or expired key is no better than a guess. */
const FAILED_KEY: ReadonlySet<ErrorCode> = new Set(['UNAUTHENTICATED', ...KEY_REFUSALS]);
const BEARER = /^Bearer\s+(ctk_\S+)$/i;

export interface ProxyRequestInfo {
  /** The device name from the Host header. */
  readonly deviceName: string;
  /** The host the session cookie is bound to (`<name>.<domain>`). */
  readonly host: string;
  readonly authorization?: string;
  readonly cookie?: string;
  readonly remoteAddr: string | null;
  /** The client connection (its socket): a bearer key checked once is remembered on it for KEY_CACHE_MS. */
  readonly connection?: object;
}

/** Headers to send on to the device: the broker's own credentials removed, the device's own ones kept. */
export interface ForwardedCredentials {
  readonly authorization: string | undefined;
  readonly cookie: string | undefined;
}

export type ProxyDecision =
  | {
      readonly allow: true;
      readonly actor: Actor;
      readonly device: DeviceRecord;
      /** The http slot's tunnel port on the broker's loopback. */
      readonly port: number;
      readonly forward: ForwardedCredentials;
    }
  | {
      readonly allow: false;
      readonly code: ErrorCode;
      readonly message: string;
      readonly device?: DeviceRecord;
      /** DEVICE_OFFLINE: when the device went offline, as far as the store knows. */
      readonly offlineSince?: OfflineSince;
      /** RATE_LIMITED: when to try again. */
      readonly retryAfterSeconds?: number;
    };

export interface ProxyAuthDeps {
  readonly core: Pick<CoreDeps, 'store' | 'clock' | 'config'>;
  readonly presence: TunnelPresence;
  readonly sessionSecret: Buffer;
  /** Monotonic milliseconds for the failure limiter (tests move it). */
  readonly monotonicMs?: () => number;
}

interface Cached<T> {
  readonly value: T;
  readonly until: number;
}

function refuse(code: ErrorCode, message: string, extra: { device?: DeviceRecord; offlineSince?: OfflineSince; retryAfterSeconds?: number } = {}): ProxyDecision {
  return { allow: false, code, message, ...extra };
}

function setBounded<K, V>(map: Map<K, V>, key: K, value: V): void {
  if (map.size >= CACHE_MAX) map.clear();
  map.set(key, value);
}

export class ProxyAuthorizer {
  private readonly keys = new Map<string, Cached<ApiKeyRecord>>();
  private readonly devices = new Map<string, Cached<DeviceRecord | null>>();
  private readonly audited = new Map<string, number>();
  /** Per client connection: the last bearer key it presented and what it was (skips hashing on keep-alive). */
  private readonly byConnection = new WeakMap<object, { presented: string; cached: Cached<ApiKeyRecord>; generation: number }>();
  /** Bumped by forgetApiKey: a connection's memo from an older generation is not trusted. */
  private keyGeneration = 0;
  /** Live connections (WebSocket relays) by the actor id of the key that opened them: forgetApiKey closes them. */
  private readonly liveByActor = new Map<string, Set<() => void>>();
  /** Failed key checks per client address. */
  private readonly failures: ConnectionRateLimiter;

  constructor(private readonly deps: ProxyAuthDeps) {
    const { authFailureBurst, authFailuresPerMinute } = deps.core.config.proxy;
    this.failures = new ConnectionRateLimiter({ ratePerSecond: authFailuresPerMinute / 60, burst: authFailureBurst }, deps.monotonicMs);
  }

  /** Seconds SOURCE must wait before an unknown key is checked for it (0: now). */
  retryAfterSeconds(source: string | null): number {
    return source ? this.failures.retryAfterSeconds(source) : 0;
  }

  private now(): Date {
    return this.deps.core.clock();
  }

  /** A revoked device must not be served from the cache. */
  forgetDevice(deviceId: string): void {
    for (const [name, entry] of this.devices) if (entry.value?.id === deviceId) this.devices.delete(name);
  }

  /**
   * A revoked API key must not be served from the caches (by secret, by id
   * for sessions, per connection), and the live connections it opened end.
   */
  forgetApiKey(keyId: string): void {
    for (const [cacheKey, entry] of this.keys) if (entry.value.id === keyId) this.keys.delete(cacheKey);
    this.keyGeneration++;
    const live = this.liveByActor.get(apiKeyActorId(keyId));
    this.liveByActor.delete(apiKeyActorId(keyId));
    for (const close of live ?? []) close();
  }

  /** CLOSE ends a live connection ACTOR opened (a WebSocket relay) when its key is revoked; call the returned release once it ended. */
  holdForKey(actor: Actor, close: () => void): () => void {
    let live = this.liveByActor.get(actor.id);
    if (!live) this.liveByActor.set(actor.id, (live = new Set()));
    live.add(close);
    return () => {
      live.delete(close);
      if (live.size === 0 && this.liveByActor.get(actor.id) === live) this.liveByActor.delete(actor.id);
    };
  }

  private async audit(actor: string, action: string, target: string | null, remoteAddr: string | null, outcome: 'ok' | ErrorCode, details?: Record<string, unknown>): Promise<void> {
    await this.deps.core.store.appendAudit({ at: this.now(), actor, action, target, remoteAddr, outcome, details }).catch(() => undefined);
  }

  /**
   * The check behind admitApiKey here: the API key for a presented secret (cached by its hash, and on
   * the connection); UNAUTHENTICATED otherwise, or RATE_LIMITED when SOURCE has no failures left and
   * the key is not known good.
   */
  private async apiKey(presented: string, source: string | null, connection?: object): Promise<ApiKeyRecord> {
    const nowMs = Date.now();
    const memo = connection ? this.byConnection.get(connection) : undefined;
    if (memo && memo.presented === presented && memo.generation === this.keyGeneration && this.usable(memo.cached, nowMs)) return memo.cached.value;
    const cacheKey = createHash('sha256').update(presented).digest('base64url');
    let hit = this.keys.get(cacheKey);
    // A cached key past its expiry is a miss: the store says why, and the refusal counts as a failure.
    if (!hit || !this.usable(hit, nowMs)) {
      const wait = this.retryAfterSeconds(source);
      if (wait > 0) throw new BrokerError('RATE_LIMITED', `too many failed attempts from your address; try again in ${wait} s`);
      let record: ApiKeyRecord;
      try {
        record = await authenticateApiKey(this.deps.core.store, presented, this.now());
      } catch (err) {
        if (source && err instanceof BrokerError && FAILED_KEY.has(err.code)) this.failures.take(source);
        throw err;
      }
      hit = { value: record, until: nowMs + KEY_CACHE_MS };
      setBounded(this.keys, cacheKey, hit);
    }
    if (connection) this.byConnection.set(connection, { presented, cached: hit, generation: this.keyGeneration });
    return hit.value;
  }

  /** A cache entry still fresh at NOWMS, for a key still usable now (checkApiKeyUsable's rule: not revoked, not expired). */
  private usable(entry: Cached<ApiKeyRecord>, nowMs: number): boolean {
    return entry.until > nowMs && apiKeyStatus(entry.value, this.now()) === 'active';
  }

  /** The key KEYID, while it is still usable (not revoked, not expired); null otherwise. */
  private async activeKey(keyId: string): Promise<ApiKeyRecord | null> {
    const record = await this.keyById(keyId);
    return record && apiKeyStatus(record, this.now()) === 'active' ? record : null;
  }

  private async keyById(id: string): Promise<ApiKeyRecord | null> {
    const cacheKey = `id:${id}`;
    const hit = this.keys.get(cacheKey);
    const nowMs = Date.now();
    if (hit && hit.until > nowMs) return hit.value;
    const record = await this.deps.core.store.findApiKey(id);
    if (record) setBounded(this.keys, cacheKey, { value: record, until: nowMs + KEY_CACHE_MS });
    return record;
  }

  private async device(name: string): Promise<DeviceRecord | null> {
    const hit = this.devices.get(name);
    const nowMs = Date.now();
    if (hit && hit.until > nowMs) return hit.value;
    const record = await this.deps.core.store.findDeviceByName(name);
    setBounded(this.devices, name, { value: record, until: nowMs + DEVICE_CACHE_MS });
    return record;
  }

  /**
   * Browser sign-in on the broker's origin: the API key typed into the form,
   * checked like a bearer key (INFO.host is what the session is bound to,
   * INFO.deviceName the device asked for). Returns the Set-Cookie value,
   * its lifetime, and the key's id for the device's sign-in code.
   */
  async login(info: Omit<ProxyRequestInfo, 'authorization' | 'cookie'>, presented: string, sessionMinutes: number): Promise<{ cookie: string; maxAgeSeconds: number; actor: Actor; keyId: string }> {
    const door = { action: 'proxy.login', target: info.deviceName, remoteAddr: info.remoteAddr };
    const { record, actor } = await admitApiKey(this.deps.core, presented, door, () => this.apiKey(presented, info.remoteAddr));
    if (!PROXY_ROLES.has(record.role)) {
      await this.audit(actor.id, 'proxy.login', info.deviceName, info.remoteAddr, 'FORBIDDEN');
      throw new BrokerError('FORBIDDEN', 'this API key may not reach devices (roles: admin, operator, proxy)');
    }
    await this.audit(actor.id, 'proxy.login', info.deviceName, info.remoteAddr, 'ok', { name: record.name, host: info.host });
    return { ...this.session(record.id, info.host, sessionMinutes), actor, keyId: record.id };
  }

  /** A session cookie value naming KEYID, bound to HOST, for SESSIONMINUTES. */
  private session(keyId: string, host: string, sessionMinutes: number): { cookie: string; maxAgeSeconds: number } {
    const maxAgeSeconds = sessionMinutes * 60;
    const cookie = signSession(this.deps.sessionSecret, { keyId, host, expiresAt: new Date(this.now().getTime() + maxAgeSeconds * 1000) });
    return { cookie, maxAgeSeconds };
  }

  /** The session for HOST that a redeemed sign-in code gives, if KEYID still may reach devices. */
  async sessionFor(keyId: string, host: string, sessionMinutes: number): Promise<{ cookie: string; maxAgeSeconds: number } | undefined> {
    const record = await this.activeKey(keyId);
    if (!record || !PROXY_ROLES.has(record.role)) return undefined;
    return this.session(keyId, host, sessionMinutes);
  }

  /** The API key a session cookie in COOKIEHEADER (bound to HOST) names, if genuine and unexpired and its key still active (not revoked, not expired). */
  private async sessionKey(cookieHeader: string | undefined, host: string): Promise<ApiKeyRecord | undefined> {
    const session = readCookie(cookieHeader, SESSION_COOKIE);
    const claims = session ? verifySession(this.deps.sessionSecret, session, host, this.now()) : undefined;
    const record = claims ? await this.activeKey(claims.keyId) : null;
    return record ?? undefined;
  }

  /** The key id of an operator already signed in on the broker's origin (HOST: BROKER_SESSION_HOST), if any. */
  async signedInKey(cookieHeader: string | undefined, host: string): Promise<string | undefined> {
    const record = await this.sessionKey(cookieHeader, host);
    return record && PROXY_ROLES.has(record.role) ? record.id : undefined;
  }

  /** The caller's identity from a bearer API key or a session cookie; a refusal otherwise. */
  async authenticate(info: ProxyRequestInfo): Promise<{ actor: Actor; forward: ForwardedCredentials } | ProxyDecision> {
    const bearer = info.authorization ? BEARER.exec(info.authorization)?.[1] : undefined;
    const session = readCookie(info.cookie, SESSION_COOKIE);
    // Our credentials never travel on; anything else (the device's own Basic auth, its cookies) does.
    const forward: ForwardedCredentials = { authorization: bearer ? undefined : info.authorization, cookie: stripCookie(info.cookie, SESSION_COOKIE) };
    let record: ApiKeyRecord | null;
    if (bearer) {
      const door = { action: 'auth.failure', target: info.host, remoteAddr: info.remoteAddr, details: { via: 'proxy' } };
      try {
        ({ record } = await admitApiKey(this.deps.core, bearer, door, () => this.apiKey(bearer, info.remoteAddr, info.connection)));
      } catch (err) {
        if (!(err instanceof BrokerError)) throw err;
        if (err.code === 'RATE_LIMITED') return refuse('RATE_LIMITED', err.message, { retryAfterSeconds: this.retryAfterSeconds(info.remoteAddr) });
        if (KEY_REFUSALS.has(err.code)) return refuse(err.code, err.message);
        return refuse('UNAUTHENTICATED', 'the API key was not accepted');
      }
    } else if (session) {
      record = (await this.sessionKey(info.cookie, info.host)) ?? null;
      if (!record) return refuse('UNAUTHENTICATED', 'your session has expired; log in again');
    } else {
      return refuse('UNAUTHENTICATED', 'log in with an operator API key');
    }
    if (!PROXY_ROLES.has(record.role)) return refuse('FORBIDDEN', 'this API key may not reach devices (roles: admin, operator, proxy)');
    return { actor: apiKeyActor(record, info.remoteAddr), forward };
  }

  /** The whole decision for one request. */
  async decide(info: ProxyRequestInfo): Promise<ProxyDecision> {
    const auth = await this.authenticate(info);
    if ('allow' in auth) return auth;
    const device = await this.device(info.deviceName);
    if (!device) return refuse('DEVICE_UNKNOWN', `there is no device named ${info.deviceName}`);
    if (device.status === 'revoked') return refuse('DEVICE_REVOKED', `${info.deviceName} has been revoked`, { device });
    if (device.portFirst === null || device.portLast === null || device.portFirst + SLOT.http > device.portLast) {
      return refuse('DEVICE_SERVICE_UNAVAILABLE', `${info.deviceName} has no http slot in its port block`, { device });
    }
    const port = device.portFirst + SLOT.http;
    const forwarded = await this.deps.presence.forwardedPorts(device.id);
    if (forwarded !== undefined && forwarded.length === 0) {
      return refuse('DEVICE_OFFLINE', `${info.deviceName} is offline`, { device, offlineSince: await this.offlineSince(device) });
    }
    if (forwarded !== undefined && !forwarded.includes(port)) {
      return refuse('DEVICE_SERVICE_UNAVAILABLE', `${info.deviceName} is connected but does not forward its http slot (port ${port})`, { device });
    }
    this.noteAccess(auth.actor, device);
    return { allow: true, actor: auth.actor, device, port, forward: auth.forward };
  }

  /** When DEVICE went offline: the cached row may predate the disconnect, so this reads the store. */
  async offlineSince(device: DeviceRecord): Promise<OfflineSince> {
    return offlineSince((await this.deps.core.store.findDevice(device.id)) ?? device);
  }

  /** One audit event per (actor, device) per window: who reached which device, when — without a row per request. */
  private noteAccess(actor: Actor, device: DeviceRecord): void {
    const key = `${actor.id}|${device.id}`;
    const nowMs = Date.now();
    const last = this.audited.get(key);
    if (last !== undefined && nowMs - last < AUDIT_WINDOW_MS) return;
    setBounded(this.audited, key, nowMs);
    void this.audit(actor.id, 'proxy.access', device.id, actor.remoteAddr, 'ok', { name: device.name });
  }
}
