/**
 * Migration 005's trigger on a real PostgreSQL: a rotation started, moved,
 * acked by a node or finished announces itself on certunnel_rotations at
 * its commit (ids only), through the event feed on that channel; a
 * transaction that rolls back announces nothing; nothing reaches the
 * devices' channel.
 */
import test from 'ava';
import { openStore } from '../../../../broker/store/index.js';
import { openEventFeed, ROTATIONS_CHANNEL } from '../../../../broker/store/event-feed.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../../../testkit/postgres.js';
import { waitFor } from '../../../../testkit/ssh-client.js';
import { at, T0 } from '../fixtures.js';

let cluster: PostgresCluster;
test.before(async () => {
  cluster = await startPostgres();
});
test.after.always(async () => {
  await cluster?.stop();
});

test('ok/start, ack, learn, finish: one notification each on certunnel_rotations, ids only; a rolled-back start none', async (t) => {
  const db = await createTestDatabase(cluster);
  const store = await openStore({ filename: ':unused:', databaseUrl: db.url });
  const rotations: string[] = [];
  const events: string[] = [];
  let listening = 0;
  const feeds = [
    openEventFeed({ url: db.url, applicationName: 'certunnel-rotations:test', channel: ROTATIONS_CHANNEL, onNotification: (p) => rotations.push(p), onListening: () => listening++, onDown: () => undefined }),
    openEventFeed({ url: db.url, applicationName: 'certunnel-events:test', onNotification: (p) => events.push(p), onListening: () => listening++, onDown: () => undefined }),
  ];
  try {
    await waitFor(() => listening === 2, 'both feeds to listen', 30_000);
    await store.registerNode({ id: 'node_a', name: 'a', sshEndpoint: 'a:22', apiUrl: null, internalAddress: null, relayKey: null, version: 't', startedAt: T0 });
    await t.throwsAsync(
      store.transaction(async (tx) => {
        await tx.startRotation({ root: 'host-key', nextSealed: 's', fromFingerprint: 'f', nextFingerprint: 'n', startedAt: T0, startedBy: 'apikey:a' });
        throw new Error('changed my mind');
      }),
      { message: 'changed my mind' },
    );
    const r = await store.startRotation({ root: 'user-ca', nextSealed: 'v1.sealed', fromFingerprint: 'SHA256:f', nextFingerprint: 'SHA256:n', startedAt: T0, startedBy: 'apikey:a' });
    await store.ackRotation('node_a', r.id);
    await store.setRotationPhase(r.id, 'prepare', 'learn', at(1));
    await store.finishRotation(r.id, 'committed', 'apikey:a', at(2));
    await waitFor(() => rotations.length >= 4, 'four notifications', 30_000);
    t.deepEqual(rotations.map((p) => JSON.parse(p) as unknown), Array.from({ length: 4 }, () => ({ type: 'rotation.changed', id: r.id })));
    t.false(rotations.some((p) => p.includes('sealed')), 'no key material');
    t.deepEqual(events, [], 'nothing on the devices\' channel');
  } finally {
    await Promise.all(feeds.map((f) => f.close()));
    await store.close();
  }
});

test('fail/a channel name that is not an identifier is refused before connecting', (t) => {
  t.throws(() => openEventFeed({ url: 'postgres://x', applicationName: 'x', channel: 'x; DROP TABLE devices', onNotification: () => undefined, onListening: () => undefined, onDown: () => undefined }));
});
