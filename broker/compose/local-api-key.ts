/**
 * `certunnel apikey create|list|revoke --data DIR --local` on the broker's
 * host: API keys straight in the data directory's store, without an API key
 * (the first admin key, one more when no admin key is at hand, or revoking a
 * key when the admin key is lost). A created key is returned once and stored
 * only hashed. A running broker's API sees a local revocation on its next
 * request; its proxy within KEY_CACHE_MS (broker/proxy/proxy-auth.ts), since
 * only a revocation through the API empties the proxy's caches at once.
 */
import { access } from 'node:fs/promises';
import type { ApiKeyRole, ApiKeyView, RevokeApiKeyResponse } from '../../api/index.js';
import { createApiKey, revokeApiKey, viewApiKey, type CreatedApiKey } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { openStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import { dataPaths } from './data-dir.js';
import { storeLocation } from './store-location.js';

/** Who acts in the audit trail for these commands. */
const LOCAL_ACTOR = { id: 'local-cli', remoteAddr: null };

async function withLocalStore<T>(dataDir: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const paths = dataPaths(dataDir);
  const initialised = await access(paths.config).then(() => true, () => false);
  if (!initialised) throw new BrokerError('CONFIG_INVALID', `${dataDir} is not a broker data directory; run certunnel init first`);
  const store = await openStore(await storeLocation(paths));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export async function createLocalApiKey(dataDir: string, req: { role: ApiKeyRole; name: string; expiresAt?: Date | null }, now = new Date()): Promise<CreatedApiKey> {
  return withLocalStore(dataDir, (store) => createApiKey(store, req, LOCAL_ACTOR, now));
}

export async function listLocalApiKeys(dataDir: string, now = new Date()): Promise<ApiKeyView[]> {
  return withLocalStore(dataDir, async (store) => (await store.listApiKeys()).map((k) => viewApiKey(k, now)));
}

export async function revokeLocalApiKey(dataDir: string, id: string, options: { force?: boolean }, now = new Date()): Promise<RevokeApiKeyResponse> {
  return withLocalStore(dataDir, async (store) => {
    const result = await revokeApiKey({ store, clock: () => now }, id, options, LOCAL_ACTOR);
    return { key: viewApiKey(result.record, now), alreadyRevoked: result.alreadyRevoked };
  });
}
