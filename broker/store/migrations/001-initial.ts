/**
 * Initial schema. Portable knex schema builder only (SQLite today,
 * PostgreSQL later). Conventions:
 * - times are integer milliseconds since the epoch in BIGINT columns (in
 *   SQLite any INT type is a signed 64-bit INTEGER; PostgreSQL's int8 comes
 *   back as a string, which the row mappers accept);
 * - uniqueness that matters (token hash, key fingerprint, device name, port
 *   block, serial, nonce) is a PRIMARY KEY or UNIQUE constraint, so it holds
 *   however many brokers write, never a check in JS;
 * - enums are CHECK constraints (knex `enu`), JSON is TEXT.
 */
import type { Knex } from 'knex';

export const name = '001-initial';

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('enrollment_tokens', (t) => {
    t.string('id').primary();
    t.string('token_hash').notNullable().unique();
    t.string('batch').nullable().index();
    t.string('bind_name').nullable();
    t.string('bind_serial').nullable();
    t.bigInteger('created_at').notNullable();
    t.string('created_by').notNullable();
    t.bigInteger('expires_at').notNullable();
    t.bigInteger('used_at').nullable();
    // No foreign key: the token is redeemed before the device row exists
    // (same transaction), so that only the redeeming call inserts a device.
    t.string('used_by_device').nullable();
    t.bigInteger('revoked_at').nullable();
    t.string('revoked_by').nullable();
    t.index(['created_at', 'id']); // keyset pagination
  });

  await knex.schema.createTable('devices', (t) => {
    t.string('id').primary();
    t.string('name').nullable().unique(); // NULLs are distinct in SQLite and PostgreSQL
    t.string('hardware_serial').nullable();
    t.text('public_key').notNullable();
    t.string('key_fingerprint').notNullable().unique();
    t.integer('port_first').nullable();
    t.integer('port_last').nullable();
    t.enu('status', ['active', 'revoked']).notNullable().defaultTo('active');
    t.text('labels').notNullable().defaultTo('{}');
    t.string('token_id').nullable().references('id').inTable('enrollment_tokens');
    t.bigInteger('created_at').notNullable();
    t.bigInteger('last_seen_at').nullable();
    t.bigInteger('revoked_at').nullable();
    t.string('revoked_by').nullable();
    t.text('revoke_reason').nullable();
    t.boolean('online').notNullable().defaultTo(false);
    t.bigInteger('connected_since').nullable();
    t.string('remote_addr').nullable();
    t.index(['created_at', 'id']);
    t.index(['status']);
  });

  await knex.schema.createTable('port_blocks', (t) => {
    t.integer('first_port').primary(); // one row per block: no double allocation
    t.integer('last_port').notNullable();
    // UNIQUE: a device holds at most one block. Stays set during quarantine.
    t.string('device_id').nullable().unique().references('id').inTable('devices');
    t.bigInteger('released_at').nullable();
    t.bigInteger('quarantine_until').nullable();
    // Released blocks in port order: the allocator's "lowest reusable block"
    // walks this (partial indexes: SQLite and PostgreSQL alike). Without it
    // SQLite's planner scans every allocated block through the primary key.
    t.index(['first_port'], 'port_blocks_released_index', { predicate: knex.whereNotNull('released_at') });
    t.check('?? <= ??', ['first_port', 'last_port']);
  });

  await knex.schema.createTable('certificates', (t) => {
    t.bigInteger('serial').primary();
    t.string('device_id').nullable().references('id').inTable('devices');
    t.enu('kind', ['device', 'operator']).notNullable();
    t.string('key_fingerprint').notNullable();
    t.string('key_id').notNullable();
    t.string('principal').notNullable();
    t.bigInteger('valid_after').notNullable();
    t.bigInteger('valid_before').notNullable();
    t.bigInteger('issued_at').notNullable();
    t.bigInteger('revoked_at').nullable();
    t.index(['device_id']);
    t.index(['valid_before']); // KRL: only unexpired certificates matter
  });

  await knex.schema.createTable('serial_counter', (t) => {
    t.integer('id').primary();
    t.bigInteger('value').notNullable();
    t.check('?? = 1', ['id']); // exactly one row
  });
  await knex('serial_counter').insert({ id: 1, value: 0 });

  await knex.schema.createTable('api_keys', (t) => {
    t.string('id').primary();
    t.string('name').notNullable();
    t.enu('role', ['admin', 'operator', 'provisioner']).notNullable();
    t.string('key_hash').notNullable();
    t.bigInteger('created_at').notNullable();
    t.string('created_by').notNullable();
    t.bigInteger('revoked_at').nullable();
    t.bigInteger('last_used_at').nullable();
  });

  await knex.schema.createTable('renew_nonces', (t) => {
    t.string('nonce').primary(); // a replay is a primary-key conflict
    t.string('device_id').notNullable();
    t.bigInteger('expires_at').notNullable().index();
  });

  await knex.schema.createTable('audit_events', (t) => {
    t.increments('id');
    t.bigInteger('at').notNullable().index();
    t.string('actor').notNullable().index();
    t.string('action').notNullable().index();
    t.string('target').nullable();
    t.string('remote_addr').nullable();
    t.string('outcome').notNullable();
    t.text('details').notNullable().defaultTo('{}');
  });

  await knex.schema.createTable('meta', (t) => {
    t.string('key').primary();
    t.text('value').notNullable();
  });
  await knex('meta').insert({ key: 'krl_version', value: '0' });
}

export async function down(knex: Knex): Promise<void> {
  for (const table of [
    'meta',
    'audit_events',
    'renew_nonces',
    'api_keys',
    'serial_counter',
    'certificates',
    'port_blocks',
    'devices',
    'enrollment_tokens',
  ]) {
    await knex.schema.dropTableIfExists(table);
  }
}
