/**
 * API keys with roles: admin, operator, provisioner, proxy. Shown once,
 * stored hashed, compared in constant time; optionally expiring; revocable.
 * One front door (admitApiKey) for every place a key is presented: the koa
 * API and the HTTP proxy (bearer keys and its login form) check keys, build
 * actors and audit refusals alike, and one rule (apiKeyStatus) says whether
 * a key still works, for fresh and cached records alike.
 */
import type { ApiKeyStatus, ApiKeyView } from '../../api/index.js';
import { BrokerError, isBrokerError, type ErrorCode } from './errors.js';
import type { ApiKeyRecord, ApiKeyRole, NewAuditEvent, Store } from '../store/types.js';
import type { Actor, CoreDeps } from './deps.js';
import { failureSink } from './failure-audit.js';
import { hashesEqual, hashSecret, newApiKeySecret, newId, splitApiKey } from './secrets.js';

export interface CreatedApiKey {
  id: string;
  name: string;
  role: ApiKeyRole;
  key: string;
  expiresAt: string | null;
}

export async function createApiKey(
  store: Store,
  req: { role: ApiKeyRole; name: string; expiresAt?: Date | null },
  actor: Pick<Actor, 'id' | 'remoteAddr'>,
  now: Date,
): Promise<CreatedApiKey> {
  const expiresAt = req.expiresAt ?? null;
  if (expiresAt && expiresAt <= now) throw new BrokerError('BAD_REQUEST', 'expiresAt must be in the future');
  const id = newId('key');
  const key = newApiKeySecret(id);
  const secret = splitApiKey(key)!.secret;
  const expires = expiresAt?.toISOString() ?? null;
  await store.transaction(async (tx) => {
    await tx.insertApiKey({ id, name: req.name, role: req.role, keyHash: hashSecret(secret), createdAt: now, createdBy: actor.id, expiresAt });
    await tx.appendAudit({ at: now, actor: actor.id, action: 'apikey.create', target: id, remoteAddr: actor.remoteAddr, outcome: 'ok', details: { role: req.role, name: req.name, expiresAt: expires } });
  });
  return { id, name: req.name, role: req.role, key, expiresAt: expires };
}

/**
 * Derived, in this order of precedence: revoked > expired > active. The one
 * rule for whether a key still works; callers that cache records (the
 * proxy) apply it on every use, so an expiry needs no store read.
 */
export function apiKeyStatus(record: ApiKeyRecord, now: Date): ApiKeyStatus {
  if (record.revokedAt) return 'revoked';
  if (record.expiresAt && record.expiresAt <= now) return 'expired';
  return 'active';
}

/** A key as listed (never its secret or hash), with its status at NOW: the API's and the local CLI's view. */
export function viewApiKey(k: ApiKeyRecord, now: Date): ApiKeyView {
  const iso = (d: Date | null): string | null => d?.toISOString() ?? null;
  return {
    id: k.id, name: k.name, role: k.role, createdAt: k.createdAt.toISOString(), createdBy: k.createdBy, revokedAt: iso(k.revokedAt), lastUsedAt: iso(k.lastUsedAt),
    expiresAt: iso(k.expiresAt), status: apiKeyStatus(k, now),
  };
}

/** Refuses a known key that no longer works at NOW: API_KEY_REVOKED or API_KEY_EXPIRED. */
function checkApiKeyUsable(record: ApiKeyRecord, now: Date): void {
  const status = apiKeyStatus(record, now);
  if (status === 'revoked') throw new BrokerError('API_KEY_REVOKED', 'this API key has been revoked');
  if (status === 'expired') throw new BrokerError('API_KEY_EXPIRED', `this API key expired at ${record.expiresAt!.toISOString()}`);
}

/**
 * The key record for a presented key: UNAUTHENTICATED when the key is
 * unknown or its secret wrong; API_KEY_REVOKED / API_KEY_EXPIRED only once
 * the secret matched (so they tell nothing to someone without the key).
 */
export async function authenticateApiKey(store: Store, presented: string | undefined, now: Date): Promise<ApiKeyRecord> {
  const parts = presented ? splitApiKey(presented) : undefined;
  const record = parts ? await store.findApiKey(parts.id) : null;
  // Hash even when the id is unknown so both paths cost the same.
  const ok = hashesEqual(hashSecret(parts?.secret ?? ''), record?.keyHash ?? '00');
  if (!parts || !record || !ok) {
    throw new BrokerError('UNAUTHENTICATED', 'a valid API key is required (Authorization: Bearer ctk_…)');
  }
  checkApiKeyUsable(record, now);
  await store.touchApiKey(record.id, now);
  return record;
}

/** Where a key is presented, for the audit row of a refusal: ACTION on TARGET from REMOTEADDR. */
export interface ApiKeyDoor {
  /** `auth.failure` (the API, the proxy's bearer keys) or `proxy.login` (the proxy's login form). */
  readonly action: string;
  readonly target: string | null;
  readonly remoteAddr: string | null;
  readonly details?: Record<string, unknown>;
}

/** The actor id of key KEYID in the audit trail: `apikey:<id>`. */
export function apiKeyActorId(keyId: string): string {
  return `apikey:${keyId}`;
}

/**
 * The key names behind the `apikey:<id>` actors among ACTORS (audit rows, a device's revokedBy), by actor: a
 * person recognises "alice", not key_…. Revoked and expired keys keep their names; unknown ids get none.
 */
export async function apiKeyActorNames(store: Pick<Store, 'findApiKey'>, actors: Iterable<string | null>): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  const wanted = new Set([...actors].filter((a): a is string => a !== null && a.startsWith('apikey:')));
  for (const actor of wanted) {
    const key = await store.findApiKey(actor.slice('apikey:'.length));
    if (key) names.set(actor, key.name);
  }
  return names;
}

/** Who an API key acts as, from REMOTEADDR. */
export function apiKeyActor(record: ApiKeyRecord, remoteAddr: string | null): Actor {
  return { id: apiKeyActorId(record.id), role: record.role, name: record.name, remoteAddr };
}

/** The audit row of a key refused at DOOR with CODE: the actor is anonymous, since no key was accepted. */
export function refusedKeyAudit(door: ApiKeyDoor, at: Date, code: ErrorCode = 'UNAUTHENTICATED'): NewAuditEvent {
  return { at, actor: 'anonymous', action: door.action, target: door.target, remoteAddr: door.remoteAddr, outcome: code, details: door.details };
}

/**
 * The front door for a key PRESENTED at DOOR: CHECK finds its record
 * (authenticateApiKey by default; the proxy puts its caches and failed-key
 * limiter in front of that) and the key's actor is returned. A refusal is
 * audited at DOOR (best effort) and rethrown, except RATE_LIMITED: the
 * limiter refused before any key was checked.
 */
export async function admitApiKey(
  deps: Pick<CoreDeps, 'store' | 'clock'> & Partial<Pick<CoreDeps, 'failureAudit'>>,
  presented: string | undefined,
  door: ApiKeyDoor,
  check: () => Promise<ApiKeyRecord> = () => authenticateApiKey(deps.store, presented, deps.clock()),
): Promise<{ record: ApiKeyRecord; actor: Actor }> {
  let record: ApiKeyRecord;
  try {
    record = await check();
  } catch (err) {
    if (!isBrokerError(err, 'RATE_LIMITED')) {
      const code = err instanceof BrokerError ? err.code : 'UNAUTHENTICATED';
      await failureSink(deps).appendAudit(refusedKeyAudit(door, deps.clock(), code)).catch(() => undefined);
    }
    throw err;
  }
  return { record, actor: apiKeyActor(record, door.remoteAddr) };
}

/** The API's own door, after admitApiKey: a proxy key opens device web pages and nothing else. */
export function requireApiAccess(actor: Actor): void {
  if (actor.role === 'proxy') {
    throw new BrokerError('API_KEY_PROXY_ONLY', 'this API key only opens device web pages through the proxy; it cannot call the API');
  }
}

export function requireRole(actor: Actor, allowed: readonly ApiKeyRole[]): void {
  if (!actor.role || !allowed.includes(actor.role)) {
    throw new BrokerError('FORBIDDEN', `this needs one of the roles: ${allowed.join(', ')}`);
  }
}

/** Active (unrevoked, unexpired) admin keys at NOW other than EXCEPTID. */
function otherActiveAdmins(keys: readonly ApiKeyRecord[], exceptId: string, now: Date): number {
  return keys.filter((k) => k.id !== exceptId && k.role === 'admin' && apiKeyStatus(k, now) === 'active').length;
}

/**
 * Revokes key ID: it fails from the next request on (the API reads the
 * store each time; the proxy is told by its caller to drop its caches).
 * The last active admin key is kept unless FORCE: without one, only the
 * broker's host (`certunnel apikey create --data`) can make another.
 * Every revocation of a key that exists is audited (actor, key id, name,
 * role; never the secret), a repeated one with alreadyRevoked.
 */
export async function revokeApiKey(
  deps: Pick<CoreDeps, 'store' | 'clock'>,
  id: string,
  options: { force?: boolean },
  actor: Pick<Actor, 'id' | 'remoteAddr'>,
): Promise<{ record: ApiKeyRecord; alreadyRevoked: boolean }> {
  const now = deps.clock();
  return deps.store.transaction(async (tx) => {
    const keys = await tx.listApiKeys();
    const target = keys.find((k) => k.id === id);
    if (!target) throw new BrokerError('NOT_FOUND', `there is no API key ${id}`);
    const alreadyRevoked = target.revokedAt !== null;
    const lastAdmin = target.role === 'admin' && apiKeyStatus(target, now) === 'active' && otherActiveAdmins(keys, id, now) === 0;
    if (lastAdmin && !options.force) {
      throw new BrokerError('LAST_ADMIN_KEY', `${id} is the last active admin key; force (CLI: --force) revokes it anyway, and then only \`certunnel apikey create --data\` on the broker host makes another`);
    }
    if (!alreadyRevoked) await tx.revokeApiKey(id, now);
    const details = { name: target.name, role: target.role, alreadyRevoked, ...(lastAdmin ? { force: true } : {}) };
    await tx.appendAudit({ at: now, actor: actor.id, action: 'apikey.revoke', target: id, remoteAddr: actor.remoteAddr, outcome: 'ok', details });
    return { record: alreadyRevoked ? target : { ...target, revokedAt: now }, alreadyRevoked };
  });
}
