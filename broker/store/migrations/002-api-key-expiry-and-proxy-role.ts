/**
 * API keys gain an optional expiry (expires_at, integer milliseconds; NULL:
 * never, as for every key made before this migration) and the role `proxy`
 * (opens device web pages, cannot call the API).
 *
 * The role is a CHECK constraint (001's `enu`). knex's alter() cannot widen
 * it on SQLite: its table rebuild keeps the old CHECK beside the new one, so
 * `proxy` would still be refused. The table is rebuilt here instead, with
 * the portable schema builder: a new table with the new CHECK, every row
 * copied, the old table dropped, the new one renamed; then expires_at is an
 * added column. All inside the migration's transaction. Nothing references api_keys, so no foreign key
 * is in the way. test/broker/store/upgrade.test.ts opens a v0.2.0 data
 * directory and checks that its keys, hashes and revocations survive.
 */
import type { Knex } from 'knex';

export const name = '002-api-key-expiry-and-proxy-role';

const COLUMNS = ['id', 'name', 'role', 'key_hash', 'created_at', 'created_by', 'revoked_at', 'last_used_at'];

function apiKeysTable(roles: readonly string[]): (t: Knex.CreateTableBuilder) => void {
  return (t) => {
    t.string('id').primary();
    t.string('name').notNullable();
    t.enu('role', [...roles]).notNullable();
    t.string('key_hash').notNullable();
    t.bigInteger('created_at').notNullable();
    t.string('created_by').notNullable();
    t.bigInteger('revoked_at').nullable();
    t.bigInteger('last_used_at').nullable();
  };
}

/** api_keys again with ROLES in its CHECK: the columns of 001, the rows kept. */
async function rebuildApiKeys(knex: Knex, roles: readonly string[]): Promise<void> {
  await knex.schema.createTable('api_keys_next', apiKeysTable(roles));
  await knex('api_keys_next').insert(knex.select(COLUMNS).from('api_keys'));
  await knex.schema.dropTable('api_keys');
  await knex.schema.renameTable('api_keys_next', 'api_keys');
}

export async function up(knex: Knex): Promise<void> {
  await rebuildApiKeys(knex, ['admin', 'operator', 'provisioner', 'proxy']);
  await knex.schema.alterTable('api_keys', (t) => {
    t.bigInteger('expires_at').nullable();
  });
}

/** Fails (the CHECK refuses the copy) while a proxy key exists: delete those first. Expiries are lost. */
export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('api_keys', (t) => {
    t.dropColumn('expires_at');
  });
  await rebuildApiKeys(knex, ['admin', 'operator', 'provisioner']);
}
