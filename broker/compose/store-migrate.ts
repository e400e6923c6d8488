/**
 * `certunnel store migrate --data DIR --to postgres://…`: a broker's data
 * directory moves its store from the SQLite file to an empty PostgreSQL
 * database (issue #16), so that more nodes can join it. The copy itself is
 * broker/store/copy.ts; this is the data directory's side, in order:
 *
 * 1. Refusals that change nothing: the directory already points at
 *    PostgreSQL (STORE_ALREADY_MIGRATED), a broker runs on it
 *    (DATA_DIR_LOCKED: the lock is taken for the whole copy, so no broker
 *    starts meanwhile), the target is not empty or holds another fleet
 *    (DATABASE_NOT_EMPTY, DATABASE_IN_USE; looked at before the migrations
 *    run, so that a refused database is not given our tables).
 * 2. A SQLite file of an older release is brought to the current schema
 *    first, as the new broker would on its first start.
 * 3. The target's migrations (openStore with the URL), then the copy and
 *    its verification in one transaction.
 * 4. Only then DIR/database.url (0600) is written, and the SQLite file is
 *    renamed broker.sqlite.migrated: kept as it was, for a roll back
 *    (docs/growing.md), but not where a broker (an older release, which
 *    knows no database.url) would take it for the live store.
 *    database.url first: a crash between the two leaves a directory that
 *    runs on PostgreSQL, never one without a store.
 *
 * The URL holds a password: it is shown only as redactDatabaseUrl makes it.
 */
import { access, rename, rm, stat } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { fingerprint, loadPublicKey } from '../../ca/index.js';
import { BrokerError, isBrokerError } from '../core/errors.js';
import { copySqliteToPostgres, inspectDatabase, refuseUnlessEmpty, type TableCopyReport } from '../store/copy.js';
import { openStore } from '../store/index.js';
import { createLogger, type Logger } from '../telemetry/logger.js';
import { lockDataDir } from './data-dir-lock.js';
import { dataPaths } from './data-dir.js';
import { checkDatabaseUrl, DATABASE_URL_ENV, writeDatabaseUrl } from './store-location.js';

/** What the SQLite file is renamed to once the copy is committed. */
export const MIGRATED_SUFFIX = '.migrated';

export interface MigrateStoreOptions {
  readonly dir: string;
  /** postgres://user:password@host:port/database, empty. */
  readonly to: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly logger?: Logger;
  readonly now?: Date;
  readonly chunkRows?: number;
}

export interface MigrateStoreResult {
  readonly dataDir: string;
  /** The target, password shown as ***. */
  readonly target: string;
  readonly tables: readonly TableCopyReport[];
  readonly databaseUrlFile: string;
  /** Where the SQLite file is now (renamed, unchanged). */
  readonly sqliteKeptAs: string;
}

/** The URL with its password replaced by *** (and nothing else changed), for messages and output. */
export function redactDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}

const exists = (path: string): Promise<boolean> => access(path).then(() => true, () => false);

async function refuseMigratedOrMissing(dir: string, env: NodeJS.ProcessEnv): Promise<void> {
  const paths = dataPaths(dir);
  if (!(await exists(paths.config))) throw new BrokerError('CONFIG_INVALID', `${dir} is not a broker data directory (no config.json)`);
  if (env[DATABASE_URL_ENV]) {
    throw new BrokerError('STORE_ALREADY_MIGRATED', `${DATABASE_URL_ENV} is set: this broker's store is that PostgreSQL database, not ${paths.database}; unset it to migrate the SQLite file`);
  }
  if (await exists(paths.databaseUrl)) {
    throw new BrokerError('STORE_ALREADY_MIGRATED', `${dir} already keeps its store in PostgreSQL (${paths.databaseUrl}); nothing to migrate`);
  }
  if (!(await exists(paths.database))) throw new BrokerError('CONFIG_INVALID', `${dir} has no SQLite store (${paths.database})`);
}

/** A SQLite file of an older release gets the current schema (the migrations, as a broker's start would run them); a current one is left untouched. */
async function bringSourceUp(filename: string): Promise<void> {
  try {
    await (await openStore({ filename, readonly: true })).close();
    return;
  } catch (err) {
    if (!isBrokerError(err, 'CONFIG_INVALID') || !/out of date/.test(err.message)) throw err;
  }
  await (await openStore({ filename })).close();
}

const SIDECARS = ['-wal', '-shm'];

/**
 * A read-only SQLite connection to a WAL database creates its -wal and
 * -shm files when they are missing, and cannot remove them on close. Those
 * this command made are removed again (the -wal only while empty: it then
 * holds nothing), so that a refusal or a failed copy leaves the directory
 * as it was. Nobody else has the file open: the data directory is locked.
 */
async function sidecarCleaner(database: string): Promise<() => Promise<void>> {
  const absent: string[] = [];
  for (const suffix of SIDECARS) if (!(await exists(`${database}${suffix}`))) absent.push(suffix);
  return async () => {
    if (!absent.includes('-wal') || (await stat(`${database}-wal`).then((s) => s.size, () => 0)) !== 0) return;
    for (const suffix of absent) await rm(`${database}${suffix}`, { force: true });
  };
}

export async function migrateStore(o: MigrateStoreOptions): Promise<MigrateStoreResult> {
  const env = o.env ?? process.env;
  const url = checkDatabaseUrl(o.to);
  const paths = dataPaths(o.dir);
  await refuseMigratedOrMissing(o.dir, env);
  const lock = await lockDataDir(o.dir, o.logger ?? createLogger('silent', new Writable({ write: (_c, _e, cb) => cb() })));
  const cleanSidecars = await sidecarCleaner(paths.database);
  try {
    const userCa = fingerprint(await loadPublicKey(`${paths.userCa}.pub`));
    refuseUnlessEmpty(await inspectDatabase(url), userCa);
    await bringSourceUp(paths.database);
    // The target's schema: the migrations run on open.
    await (await openStore({ filename: paths.database, databaseUrl: url })).close();
    const tables = await copySqliteToPostgres({
      sqliteFile: paths.database, databaseUrl: url, fleetUserCa: userCa, chunkRows: o.chunkRows,
      event: {
        at: o.now ?? new Date(), actor: 'local-cli', action: 'store.migrate',
        details: (copied) => ({ from: 'sqlite', rows: Object.fromEntries(copied.map((c) => [c.table, c.rows])) }),
      },
    });
    await writeDatabaseUrl(paths, url);
    await cleanSidecars();
    const keptAs = `${paths.database}${MIGRATED_SUFFIX}`;
    for (const suffix of ['', ...SIDECARS]) {
      await rename(`${paths.database}${suffix}`, `${keptAs}${suffix}`).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    return { dataDir: o.dir, target: redactDatabaseUrl(url), tables, databaseUrlFile: paths.databaseUrl, sqliteKeptAs: keptAs };
  } catch (err) {
    await cleanSidecars();
    throw err;
  } finally {
    await lock.release();
  }
}
