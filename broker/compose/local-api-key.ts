/**
 * `certunnel apikey create` on the broker's host: mints an API key straight
 * into the data directory's store (the first admin key, or one more when no
 * admin key is at hand). The key is returned once and stored only hashed.
 */
import { access } from 'node:fs/promises';
import type { ApiKeyRole } from '../../api/index.js';
import { createApiKey } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { openStore } from '../store/index.js';
import { dataPaths } from './data-dir.js';

export async function createLocalApiKey(dataDir: string, req: { role: ApiKeyRole; name: string }, now = new Date()): Promise<{ id: string; name: string; role: ApiKeyRole; key: string }> {
  const paths = dataPaths(dataDir);
  const initialised = await access(paths.config).then(() => true, () => false);
  if (!initialised) throw new BrokerError('CONFIG_INVALID', `${dataDir} is not a broker data directory; run certunnel init first`);
  const store = await openStore({ filename: paths.database });
  try {
    return await createApiKey(store, req, { id: 'local-cli', remoteAddr: null }, now);
  } finally {
    await store.close();
  }
}
