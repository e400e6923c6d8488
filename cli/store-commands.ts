/**
 * `certunnel store migrate --data DIR --to postgres://…`: move a stopped
 * broker's store from its SQLite file to an empty PostgreSQL database
 * (broker/compose/store-migrate.ts; docs/growing.md walks through it).
 * The URL holds a password: only its redacted form is ever printed.
 */
import type { Command } from 'commander';
import { createLogger, migrateStore, MIGRATED_SUFFIX, type MigrateStoreResult } from '../broker/compose/index.js';
import { JSON_OPTION_HELP, printResult } from './output.js';

interface MigrateFlags {
  data: string;
  to: string;
  json?: boolean;
}

function describe(r: MigrateStoreResult): string {
  const width = Math.max(...r.tables.map((t) => t.table.length), 'TABLE'.length);
  const rowsWidth = Math.max(...r.tables.map((t) => String(t.rows).length), 'ROWS'.length);
  const line = (a: string, b: string, c: string) => `  ${a.padEnd(width)}  ${b.padStart(rowsWidth)}  ${c}`;
  return [
    `Copied the store of ${r.dataDir} to ${r.target}, in one transaction, and verified it (rows and SHA-256 per table):`,
    line('TABLE', 'ROWS', 'SHA-256'),
    ...r.tables.map((t) => line(t.table, String(t.rows), t.sha256)),
    `The broker now keeps its store in PostgreSQL: ${r.databaseUrlFile} (0600).`,
    `The SQLite file is kept, unchanged, as ${r.sqliteKeptAs}.`,
    'Next: start the broker as before (certunnel broker --data …); to add a node, see docs/growing.md.',
    `To roll back before the PostgreSQL broker took writes you want to keep: stop it, then rm ${r.databaseUrlFile} && mv ${r.sqliteKeptAs} ${r.sqliteKeptAs.slice(0, -MIGRATED_SUFFIX.length)}`,
  ].join('\n');
}

export function registerStoreCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const store = program.command('store').description("the broker's store");
  store
    .command('migrate')
    .description('copy a stopped broker\'s store from its SQLite file into an empty PostgreSQL database, verify it, and switch the data directory to it')
    .requiredOption('--data <dir>', 'broker data directory (its broker stopped)')
    .requiredOption('--to <url>', 'postgres://user:password@host:port/database, an empty database')
    .option('--json', JSON_OPTION_HELP)
    .action(async (flags: MigrateFlags) => {
      const result = await migrateStore({ dir: flags.data, to: flags.to, env, logger: createLogger('warn') });
      printResult(flags.json, result, describe(result));
    });
}
