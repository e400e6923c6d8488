/**
 * Static migration source: every migration is imported here by name, so the
 * same list runs from TS sources under tsx and from compiled JS (a directory
 * scan would look for the wrong extension in one of the two).
 * Append new migrations; never edit or reorder applied ones.
 */
import type { Knex } from 'knex';
import * as m001 from './001-initial.js';
import * as m002 from './002-api-key-expiry-and-proxy-role.js';
import * as m003 from './003-nodes.js';
import * as m004 from './004-cluster-events.js';
import * as m005 from './005-trust-rotations.js';

interface NamedMigration extends Knex.Migration {
  name: string;
}

export const MIGRATIONS: readonly NamedMigration[] = [m001, m002, m003, m004, m005];

export const migrationSource: Knex.MigrationSource<NamedMigration> = {
  getMigrations: async () => [...MIGRATIONS],
  getMigrationName: (migration) => migration.name,
  getMigration: async (migration) => migration,
};
