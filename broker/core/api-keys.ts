/** API keys with roles: admin, operator, provisioner. Shown once, stored hashed, compared in constant time. */
import { BrokerError } from './errors.js';
import type { ApiKeyRecord, ApiKeyRole, Store } from '../store/types.js';
import type { Actor } from './deps.js';
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

export function requireRole(actor: Actor, allowed: readonly ApiKeyRole[]): void {
  if (!actor.role || !allowed.includes(actor.role)) {
    throw new BrokerError('FORBIDDEN', `this needs one of the roles: ${allowed.join(', ')}`);
  }
}
