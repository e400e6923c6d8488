/**
 * Events between broker nodes (issue #13, docs/cluster.md "Events between
 * nodes"): on PostgreSQL, triggers send a NOTIFY on the channel
 * `certunnel_events` in the transaction that makes the change, so a change
 * that rolls back sends nothing and one that commits is announced at its
 * commit, whichever node (or tool) wrote it. The payload is JSON with ids
 * only, never a key, token or certificate:
 *
 * - `{"type":"device.revoked","deviceId":…}`: a device became revoked;
 * - `{"type":"certificates.revoked","deviceId":…,"serials":["…",…]}`: device
 *   certificates of a device that stays active were revoked (key rotation);
 *   without `serials` when the list would not fit in a notification (8000
 *   bytes), and the listener then reconciles everything;
 * - `{"type":"device.connected","deviceId":…,"node":…,"since":<ms>}`:
 *   presence now says the device's tunnel is on that node (takeover).
 *
 * SQLite has no NOTIFY and one node: nothing is created there.
 */
import type { Knex } from 'knex';

export const name = '004-cluster-events';

const isPostgres = (knex: Knex) => (knex.client as { config?: { client?: unknown } }).config?.client === 'pg';

/** The channel the triggers notify on and every node listens to (broker/store/event-feed.ts). */
export const EVENTS_CHANNEL = 'certunnel_events';

const DEVICE_EVENTS = `
CREATE FUNCTION certunnel_device_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'revoked' AND OLD.status IS DISTINCT FROM 'revoked' THEN
    PERFORM pg_notify('${EVENTS_CHANNEL}', json_build_object('type', 'device.revoked', 'deviceId', NEW.id)::text);
  END IF;
  IF NEW.online AND NEW.node_id IS NOT NULL
     AND (NOT OLD.online OR OLD.node_id IS DISTINCT FROM NEW.node_id OR OLD.connected_since IS DISTINCT FROM NEW.connected_since) THEN
    PERFORM pg_notify('${EVENTS_CHANNEL}', json_build_object('type', 'device.connected', 'deviceId', NEW.id, 'node', NEW.node_id, 'since', NEW.connected_since)::text);
  END IF;
  RETURN NULL;
END
$$`;

/** Per statement, from the transition tables: one notification per device, not per certificate. */
const CERTIFICATE_EVENTS = `
CREATE FUNCTION certunnel_certificate_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r record;
  payload text;
BEGIN
  FOR r IN
    SELECT n.device_id, array_agg(n.serial::text ORDER BY n.serial) AS serials
    FROM certunnel_new_rows n
    JOIN certunnel_old_rows o ON o.serial = n.serial
    JOIN devices d ON d.id = n.device_id AND d.status = 'active'
    WHERE o.revoked_at IS NULL AND n.revoked_at IS NOT NULL AND n.kind = 'device'
    GROUP BY n.device_id
  LOOP
    payload := json_build_object('type', 'certificates.revoked', 'deviceId', r.device_id, 'serials', r.serials)::text;
    IF octet_length(payload) > 7900 THEN
      payload := json_build_object('type', 'certificates.revoked', 'deviceId', r.device_id)::text;
    END IF;
    PERFORM pg_notify('${EVENTS_CHANNEL}', payload);
  END LOOP;
  RETURN NULL;
END
$$`;

export async function up(knex: Knex): Promise<void> {
  if (!isPostgres(knex)) return;
  await knex.raw(DEVICE_EVENTS);
  await knex.raw('CREATE TRIGGER certunnel_device_events AFTER UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION certunnel_device_events()');
  await knex.raw(CERTIFICATE_EVENTS);
  await knex.raw(`CREATE TRIGGER certunnel_certificate_events AFTER UPDATE ON certificates
    REFERENCING OLD TABLE AS certunnel_old_rows NEW TABLE AS certunnel_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION certunnel_certificate_events()`);
}

export async function down(knex: Knex): Promise<void> {
  if (!isPostgres(knex)) return;
  await knex.raw('DROP TRIGGER IF EXISTS certunnel_certificate_events ON certificates');
  await knex.raw('DROP FUNCTION IF EXISTS certunnel_certificate_events()');
  await knex.raw('DROP TRIGGER IF EXISTS certunnel_device_events ON devices');
  await knex.raw('DROP FUNCTION IF EXISTS certunnel_device_events()');
}
