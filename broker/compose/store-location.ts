/**
 * Where a data directory's store is: the SQLite file beside it (the
 * embedded default), or a PostgreSQL database shared by several broker
 * nodes. The database URL holds a password: it lives in the data
 * directory's `database.url` (0600, written by `certunnel init
 * --database-url`) or in CERTUNNEL_DATABASE_URL, which wins; never in
 * config.json, a log line or an error message.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../../ca/index.js';
import { BrokerError } from '../core/errors.js';
import type { OpenStoreOptions } from '../store/index.js';

/** The data directory's paths this needs (data-dir.ts's DataPaths has them; data-dir.ts imports this file). */
interface StorePaths {
  readonly database: string;
  readonly databaseUrl: string;
}

export const DATABASE_URL_ENV = 'CERTUNNEL_DATABASE_URL';

/** A PostgreSQL URL, checked without ever echoing it (it holds a password). */
export function checkDatabaseUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    throw new BrokerError('CONFIG_INVALID', 'the database URL is not a URL (expected postgres://user:password@host:port/database)');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new BrokerError('CONFIG_INVALID', `the database URL must start with postgres:// (got ${parsed.protocol}//)`);
  }
  if (!parsed.hostname || parsed.pathname.length <= 1) {
    throw new BrokerError('CONFIG_INVALID', 'the database URL needs a host and a database name (postgres://user:password@host:port/database)');
  }
  return url.trim();
}

/** The database URL of a data directory: the environment's, else database.url's, else none (SQLite). */
export async function databaseUrlOf(paths: Pick<StorePaths, 'databaseUrl'>, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const fromEnv = env[DATABASE_URL_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return checkDatabaseUrl(fromEnv);
  let text: string;
  try {
    text = await readFile(paths.databaseUrl, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return checkDatabaseUrl(text);
}

export async function writeDatabaseUrl(paths: Pick<StorePaths, 'databaseUrl'>, url: string): Promise<void> {
  await writeFileAtomic(paths.databaseUrl, `${checkDatabaseUrl(url)}\n`, { mode: 0o600 });
}

/** openStore's location options for a data directory. */
export async function storeLocation(paths: StorePaths, env: NodeJS.ProcessEnv = process.env): Promise<Pick<OpenStoreOptions, 'filename' | 'databaseUrl'>> {
  const databaseUrl = await databaseUrlOf(paths, env);
  return databaseUrl === undefined ? { filename: paths.database } : { filename: paths.database, databaseUrl };
}
