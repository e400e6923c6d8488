/**
 * API keys with roles: admin, operator, provisioner. Shown once, stored
 * hashed, compared in constant time. One front door (admitApiKey) for every
 * place a key is presented: the koa API and the HTTP proxy (bearer keys and
 * its login form) check keys, build actors and audit refusals alike.
 */
import { BrokerError, isBrokerError } from './errors.js';
import type { ApiKeyRecord, ApiKeyRole, NewAuditEvent, Store } from '../store/types.js';
import type { Actor, CoreDeps } from './deps.js';
import { failureSink } from './failure-audit.js';
import { hashesEqual, hashSecret, newApiKeySecret, newId, splitApiKey } from './secrets.js';

export async function createApiKey(
  store: Store,
  req: { role: ApiKeyRole; name: string },
  actor: Pick<Actor, 'id' | 'remoteAddr'>,
  now: Date,
): Promise<{ id: string; name: string; role: ApiKeyRole; key: string }> {
  const id = newId('key');
  const key = newApiKeySecret(id);
  const secret = splitApiKey(key)!.secret;
  await store.transaction(async (tx) => {
    await tx.insertApiKey({ id, name: req.name, role: req.role, keyHash: hashSecret(secret), createdAt: now, createdBy: actor.id });
    await tx.appendAudit({ at: now, actor: actor.id, action: 'apikey.create', target: id, remoteAddr: actor.remoteAddr, outcome: 'ok', details: { role: req.role, name: req.name } });
  });
  return { id, name: req.name, role: req.role, key };
}

/** The key record for a presented key, or UNAUTHENTICATED; a revoked key is as good as unknown. */
export async function authenticateApiKey(store: Store, presented: string | undefined, now: Date): Promise<ApiKeyRecord> {
  const parts = presented ? splitApiKey(presented) : undefined;
  const record = parts ? await store.findApiKey(parts.id) : null;
  // Hash even when the id is unknown so both paths cost the same.
  const ok = hashesEqual(hashSecret(parts?.secret ?? ''), record?.keyHash ?? '00');
  if (!parts || !record || !ok || record.revokedAt) {
    throw new BrokerError('UNAUTHENTICATED', 'a valid API key is required (Authorization: Bearer ctk_…)');
  }
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

/** Who an API key acts as, from REMOTEADDR. */
export function apiKeyActor(record: ApiKeyRecord, remoteAddr: string | null): Actor {
  return { id: `apikey:${record.id}`, role: record.role, name: record.name, remoteAddr };
}

/** The audit row of a key refused at DOOR: the actor is anonymous, since no key was accepted. */
export function refusedKeyAudit(door: ApiKeyDoor, at: Date): NewAuditEvent {
  return { at, actor: 'anonymous', action: door.action, target: door.target, remoteAddr: door.remoteAddr, outcome: 'UNAUTHENTICATED', details: door.details };
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
    if (!isBrokerError(err, 'RATE_LIMITED')) await failureSink(deps).appendAudit(refusedKeyAudit(door, deps.clock())).catch(() => undefined);
    throw err;
  }
  return { record, actor: apiKeyActor(record, door.remoteAddr) };
}

export function requireRole(actor: Actor, allowed: readonly ApiKeyRole[]): void {
  if (!actor.role || !allowed.includes(actor.role)) {
    throw new BrokerError('FORBIDDEN', `this needs one of the roles: ${allowed.join(', ')}`);
  }
}
