/**
 * The broker's front door for its entry point (cli/): start a broker, make
 * or read a data directory, load the configuration, mint a local API key,
 * render the nginx configuration. The CLI reaches the running broker's
 * rules only through the HTTP API (api/), and the broker process only
 * through this file.
 */
import { lockDataDir } from './data-dir-lock.js';
import type { RunningBroker, StartBrokerOptions } from './start.js';

export type { RunningBroker, StartBrokerOptions };

/**
 * Starts a broker, holding its data directory's lock (data-dir-lock.ts) until
 * it closes: a second broker on the same directory stops before it touches
 * anything. Loaded on demand: operator commands that only read the data
 * directory do not pay for the HTTP and SSH stack.
 */
export async function startBroker(options: StartBrokerOptions): Promise<RunningBroker> {
  const lock = await lockDataDir(options.config.dataDir, options.logger);
  let broker: RunningBroker;
  try {
    broker = await (await import('./start.js')).startBroker(options);
  } catch (err) {
    await lock.release();
    throw err;
  }
  return {
    ...broker,
    close: async () => {
      try {
        await broker.close();
      } finally {
        await lock.release();
      }
    },
  };
}

export { dataPaths, initDataDir, localApiUrl, type DataPaths, type InitOptions, type InitResult } from './data-dir.js';
export { loadConfig } from './load-config.js';
export { createLocalApiKey, listLocalApiKeys, revokeLocalApiKey } from './local-api-key.js';
export { ephemeralOverlapWarning, readEphemeralRange } from './ephemeral-ports.js';
export { splitHostPort, type BrokerConfig } from '../core/config.js';
export { createLogger, type Logger } from '../telemetry/logger.js';
export { renderNginxConfig, type NginxConfigInput } from '../proxy/nginx-config.js';
export { DATABASE_URL_ENV } from './store-location.js';
export { joinCluster, mintJoinToken, DEFAULT_JOIN_TTL_SECONDS, type JoinOptions, type JoinResult, type MintedJoinToken } from './node-join.js';
export { migrateStore, redactDatabaseUrl, MIGRATED_SUFFIX, type MigrateStoreOptions, type MigrateStoreResult } from './store-migrate.js';
