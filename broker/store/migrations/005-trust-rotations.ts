/**
 * Rotations of the broker's trust roots (issue #14, docs/rotation.md;
 * broker/core/trust-roots.ts has the phases):
 *
 * - `trust_rotations`: one row per rotation: the root, the phase
 *   (prepare, learn; kept as the last one reached once finished), the next
 *   key material sealed (AES-256-GCM under a key derived from the user CA
 *   that was current at start: broker/core/rotation-seal.ts), the
 *   fingerprints of the root before and after, who started it and when,
 *   when learn began, and how it finished (committed, rolled_back, forced).
 *   At most one is active (finished_at IS NULL): a unique partial index on
 *   a constant expression, so a second start fails the constraint however
 *   many nodes race.
 * - `nodes.rotation_ack`: the id of the rotation whose next key the node
 *   has loaded (prepare moves to learn once every up node acked).
 * - `certificates.signed_by`: the fingerprint of the user CA that signed the
 *   certificate (NULL for rows from before this migration: the CA of the
 *   time); `certificates.trust_rotation`: the rotation whose next trust the
 *   grant carried to an agent that declared 'trust-set-v1' (a device that
 *   has learned it).
 *
 * On PostgreSQL a trigger notifies `certunnel_rotations` (payload
 * `{"type":"rotation.changed","id":…}`, ids only) when a rotation row is
 * written or a node's ack changes, in the transaction that makes the
 * change: every node's follower (broker/compose/rotation-follower.ts)
 * re-reads the rotation then.
 */
import type { Knex } from 'knex';

export const name = '005-trust-rotations';

const isPostgres = (knex: Knex) => (knex.client as { config?: { client?: unknown } }).config?.client === 'pg';

/** The channel rotation changes are announced on (broker/compose/rotation-follower.ts listens). */
export const ROTATIONS_CHANNEL = 'certunnel_rotations';

const ROTATION_EVENTS = `
CREATE FUNCTION certunnel_rotation_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'nodes' THEN
    IF NEW.rotation_ack IS DISTINCT FROM OLD.rotation_ack AND NEW.rotation_ack IS NOT NULL THEN
      PERFORM pg_notify('${ROTATIONS_CHANNEL}', json_build_object('type', 'rotation.changed', 'id', NEW.rotation_ack)::text);
    END IF;
  ELSE
    PERFORM pg_notify('${ROTATIONS_CHANNEL}', json_build_object('type', 'rotation.changed', 'id', NEW.id)::text);
  END IF;
  RETURN NULL;
END
$$`;

export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('trust_rotations', (t) => {
    t.increments('id').primary();
    t.string('root').notNullable();
    t.string('phase').notNullable();
    t.text('next_sealed').notNullable();
    t.string('from_fingerprint').notNullable();
    t.string('next_fingerprint').notNullable();
    t.bigInteger('started_at').notNullable();
    t.string('started_by').notNullable();
    t.bigInteger('learn_at').nullable();
    t.bigInteger('finished_at').nullable();
    t.string('finished_by').nullable();
    t.string('outcome').nullable();
  });
  await knex.raw('CREATE UNIQUE INDEX trust_rotations_one_active ON trust_rotations ((finished_at IS NULL)) WHERE finished_at IS NULL');
  await knex.schema.alterTable('nodes', (t) => {
    t.integer('rotation_ack').nullable();
  });
  await knex.schema.alterTable('certificates', (t) => {
    t.string('signed_by').nullable();
    t.integer('trust_rotation').nullable();
  });
  if (isPostgres(knex)) {
    await knex.raw(ROTATION_EVENTS);
    await knex.raw('CREATE TRIGGER certunnel_rotation_events AFTER INSERT OR UPDATE ON trust_rotations FOR EACH ROW EXECUTE FUNCTION certunnel_rotation_events()');
    await knex.raw('CREATE TRIGGER certunnel_rotation_ack_events AFTER UPDATE OF rotation_ack ON nodes FOR EACH ROW EXECUTE FUNCTION certunnel_rotation_events()');
  }
}

export async function down(knex: Knex): Promise<void> {
  if (isPostgres(knex)) {
    await knex.raw('DROP TRIGGER IF EXISTS certunnel_rotation_ack_events ON nodes');
    await knex.raw('DROP TRIGGER IF EXISTS certunnel_rotation_events ON trust_rotations');
    await knex.raw('DROP FUNCTION IF EXISTS certunnel_rotation_events()');
  }
  await knex.schema.alterTable('certificates', (t) => {
    t.dropColumn('trust_rotation');
    t.dropColumn('signed_by');
  });
  await knex.schema.alterTable('nodes', (t) => {
    t.dropColumn('rotation_ack');
  });
  await knex.schema.dropTable('trust_rotations');
}
