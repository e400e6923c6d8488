/**
 * Migration 004's triggers and broker/store/event-feed.ts on a real
 * PostgreSQL: a change announces itself at its commit and only then, with
 * ids only; the feed reports a lost connection and listens again.
 */
import test from 'ava';
import pg from 'pg';
import { openStore } from '../../../../broker/store/index.js';
import { openEventFeed, reconnectDelay, type EventFeed } from '../../../../broker/store/event-feed.js';
import type { Store } from '../../../../broker/store/types.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../../../testkit/postgres.js';
import { waitFor } from '../../../../testkit/ssh-client.js';
import { at, device, T0 } from '../fixtures.js';

let cluster: PostgresCluster;
test.before(async () => {
  cluster = await startPostgres();
});
test.after.always(async () => {
  await cluster?.stop();
});

interface Feed {
  readonly payloads: Array<Record<string, unknown>>;
  readonly states: string[];
  readonly feed: EventFeed;
}

async function withFeed(fn: (store: Store, f: Feed, url: string) => Promise<void>): Promise<void> {
  const db = await createTestDatabase(cluster);
  const store = await openStore({ filename: ':unused:', databaseUrl: db.url });
  const payloads: Array<Record<string, unknown>> = [];
  const states: string[] = [];
  const feed = openEventFeed({
    url: db.url, applicationName: 'certunnel-events:test', firstDelayMs: 50, maxDelayMs: 200, pingIntervalMs: 500,
    onNotification: (p) => payloads.push(JSON.parse(p) as Record<string, unknown>),
    onListening: () => states.push('listening'),
    onDown: () => states.push('down'),
  });
  try {
    await waitFor(() => feed.listening(), 'the feed to listen');
    await fn(store, { payloads, states, feed }, db.url);
  } finally {
    await feed.close();
    await store.close();
    await db.drop();
  }
}

/** Lets notifications in flight arrive: a marker NOTIFY sent after them comes after them. */
async function settle(url: string, f: Feed): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const marker = `marker-${Math.random()}`;
  await client.query(`SELECT pg_notify('certunnel_events', json_build_object('type', $1::text)::text)`, [marker]);
  await client.end();
  await waitFor(() => f.payloads.some((p) => p.type === marker), 'the marker');
  f.payloads.splice(0, f.payloads.length, ...f.payloads.filter((p) => p.type !== marker));
}

const cert = (serial: bigint, deviceId: string, fp = 'SHA256:old') => ({
  serial, deviceId, kind: 'device' as const, keyFingerprint: fp, keyId: `device:${deviceId}`, principal: 'ports-20000-20001',
  validAfter: T0, validBefore: at(3_600_000), issuedAt: T0,
});

test.serial('ok/a revocation announces device.revoked at commit; fail/a rolled-back one announces nothing', async (t) => {
  await withFeed(async (store, f, url) => {
    const d = device();
    await store.insertDevice(d);
    await store.insertCertificate(cert(101n, d.id));
    await t.throwsAsync(store.transaction(async (tx) => {
      await tx.markDeviceRevoked(d.id, 'apikey:a', 'test', at(1));
      await tx.revokeCertificatesOfDevice(d.id, at(1));
      throw new Error('rolled back');
    }), { message: 'rolled back' });
    await settle(url, f);
    t.deepEqual(f.payloads, [], 'nothing for a rolled-back revocation');
    await store.transaction(async (tx) => {
      await tx.markDeviceRevoked(d.id, 'apikey:a', 'test', at(2));
      await tx.revokeCertificatesOfDevice(d.id, at(2));
    });
    await settle(url, f);
    // The certificates of a revoked device are not a rotation: one event.
    t.deepEqual(f.payloads, [{ type: 'device.revoked', deviceId: d.id }]);
    // Revoking again changes nothing and says nothing.
    await store.transaction(async (tx) => void (await tx.markDeviceRevoked(d.id, 'apikey:a', 'test', at(3))));
    await settle(url, f);
    t.is(f.payloads.length, 1);
  });
});

test.serial('ok/a key rotation announces certificates.revoked with the old key\'s serials only', async (t) => {
  await withFeed(async (store, f, url) => {
    const d = device();
    await store.insertDevice(d);
    await store.insertCertificate(cert(201n, d.id));
    await store.insertCertificate(cert(202n, d.id));
    await store.insertCertificate(cert(203n, d.id, 'SHA256:new'));
    t.deepEqual(await store.transaction((tx) => tx.revokeCertificatesOfKey(d.id, 'SHA256:old', at(1))), [201n, 202n]);
    await settle(url, f);
    t.deepEqual(f.payloads, [{ type: 'certificates.revoked', deviceId: d.id, serials: ['201', '202'] }]);
  });
});

test.serial('ok/presence with a node announces device.connected; offline, the same session again, or no node announce nothing', async (t) => {
  await withFeed(async (store, f, url) => {
    const d = device();
    await store.insertDevice(d);
    await store.setDeviceOnline(d.id, { online: true, since: at(10), remoteAddr: '192.0.2.1', lastSeen: at(10), node: 'node_aaaaaaaaaaaaaaaa' });
    await store.setDeviceOnline(d.id, { online: true, since: at(10), remoteAddr: '192.0.2.1', lastSeen: at(11), node: 'node_aaaaaaaaaaaaaaaa' });
    await store.setDeviceOnline(d.id, { online: true, since: at(20), remoteAddr: '192.0.2.2', lastSeen: at(20), node: 'node_bbbbbbbbbbbbbbbb' });
    await store.setDeviceOnline(d.id, { online: false, since: null, remoteAddr: null, lastSeen: at(30), node: 'node_bbbbbbbbbbbbbbbb' });
    await store.setDeviceOnline(d.id, { online: true, since: at(40), remoteAddr: null, lastSeen: at(40) });
    await settle(url, f);
    t.deepEqual(f.payloads, [
      { type: 'device.connected', deviceId: d.id, node: 'node_aaaaaaaaaaaaaaaa', since: at(10).getTime() },
      { type: 'device.connected', deviceId: d.id, node: 'node_bbbbbbbbbbbbbbbb', since: at(20).getTime() },
    ]);
  });
});

test.serial('ok/the feed reports its connection terminated and listens again', async (t) => {
  await withFeed(async (store, f, url) => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const { rows } = await client.query("SELECT pg_terminate_backend(pid, 5000) AS gone FROM pg_stat_activity WHERE application_name = 'certunnel-events:test'");
      t.deepEqual(rows, [{ gone: true }]);
    } finally {
      await client.end();
    }
    await waitFor(() => f.states.length >= 3, 'down, then listening again');
    t.deepEqual(f.states.slice(0, 3), ['listening', 'down', 'listening']);
    const d = device();
    await store.insertDevice(d);
    await store.transaction(async (tx) => void (await tx.markDeviceRevoked(d.id, 'apikey:a', null, at(1))));
    await settle(url, f);
    t.deepEqual(f.payloads, [{ type: 'device.revoked', deviceId: d.id }]);
  });
});

test('ok/reconnection delays double from the first up to the cap, with jitter in [0.5, 1)', (t) => {
  const o = { firstMs: 500, maxMs: 10_000 };
  t.deepEqual([1, 2, 3, 4, 5, 6, 30].map((n) => reconnectDelay(n, o, () => 0.999999)), [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
  t.is(reconnectDelay(1, o, () => 0), 250);
});
