/**
 * Several broker nodes on one database (issue #13):
 *
 * - `nodes`: each broker node registers itself (id, name, the SSH endpoint
 *   devices dial, the API URL, the internal address other nodes relay to,
 *   its relay key) and heart-beats; a node whose heartbeat is older than the
 *   timeout is down: the first node to see it sets down_at (once per down
 *   transition, a compare-and-swap) and clears its presence rows.
 * - `devices.node_id`: presence, which node holds the device's tunnel
 *   (NULL: none, or a single-node broker that never set it).
 * - `node_join_tokens`: single-use secrets minted by `certunnel node token`
 *   for `certunnel join`; the row holds the token's hash and the cluster's
 *   keys sealed (AES-256-GCM) under a key derived from the token, so the
 *   keys never cross the network in plaintext.
 *
 * On PostgreSQL, 002's table rebuild left api_keys' constraints named after
 * the temporary table (api_keys_next_pkey, api_keys_next_role_check): they
 * get their proper names here, so that a down() of 002 (and anyone reading
 * the schema) finds them. SQLite names no such constraints.
 */
import type { Knex } from 'knex';

export const name = '003-nodes';

const isPostgres = (knex: Knex) => (knex.client as { config?: { client?: unknown } }).config?.client === 'pg';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('nodes', (t) => {
    t.string('id').primary();
    t.string('name').notNullable();
    t.string('ssh_endpoint').notNullable();
    t.string('api_url').nullable();
    t.string('internal_address').nullable();
    t.text('relay_key').nullable();
    t.string('version').notNullable();
    t.bigInteger('started_at').notNullable();
    t.bigInteger('heartbeat_at').notNullable();
    t.bigInteger('stopped_at').nullable();
    t.bigInteger('down_at').nullable();
  });
  await knex.schema.alterTable('devices', (t) => {
    t.string('node_id').nullable();
  });
  await knex.schema.createTable('node_join_tokens', (t) => {
    t.string('id').primary();
    t.string('token_hash').notNullable().unique();
    t.text('sealed').notNullable();
    t.bigInteger('created_at').notNullable();
    t.string('created_by').notNullable();
    t.bigInteger('expires_at').notNullable();
    t.bigInteger('used_at').nullable();
    t.string('used_by_node').nullable();
  });
  if (isPostgres(knex)) {
    await knex.raw('ALTER TABLE api_keys RENAME CONSTRAINT api_keys_next_pkey TO api_keys_pkey');
    await knex.raw('ALTER TABLE api_keys RENAME CONSTRAINT api_keys_next_role_check TO api_keys_role_check');
  }
}

/** The constraints keep their proper names: 002's down() rebuilds api_keys through api_keys_next, whose names must be free. */
export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('node_join_tokens');
  await knex.schema.alterTable('devices', (t) => {
    t.dropColumn('node_id');
  });
  await knex.schema.dropTable('nodes');
}
