/**
 * broker/compose/cluster-nodes.ts with a controlled clock: two nodes on one
 * store (SQLite; the PostgreSQL run with real broker processes is
 * test/broker/compose/cluster-nodes-e2e.test.ts). Heartbeats are driven by
 * beat() (the nodes' own timers are set to 60 s and never fire here).
 */
import { join } from 'node:path';
import test from 'ava';
import { prepareClusterNode } from '../../../broker/compose/cluster-nodes.js';
import { parseConfig } from '../../../broker/core/config.js';
import { openStore } from '../../../broker/store/index.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { device } from '../store/fixtures.js';

const A = { host: 'a.example', port: 2222 };
const B = { host: 'b.example', port: 2223 };

test('ok/nodes register and beat; a silent one is marked down once, its presence cleared; it comes back; a stopped one is never down', async (t) => {
  await withTempDir(async (dir) => {
    const store = await openStore({ filename: join(dir, 'broker.sqlite') });
    let now = new Date('2030-01-01T00:00:00Z');
    const advance = (s: number) => void (now = new Date(now.getTime() + s * 1000));
    const config = parseConfig({ cluster: { heartbeatSeconds: 60, downAfterSeconds: 20 } }, dir);
    const options = (name: string) => ({ store, config, logger: createLogger('silent'), clock: () => now, paths: { node: join(dir, `${name}.json`) }, version: '9.9.9' });
    try {
      const a = await prepareClusterNode(options('a'));
      const b = await prepareClusterNode(options('b'));
      t.deepEqual(a.sshEndpoints(), [], 'nothing before start');
      await a.start({ sshEndpoint: A, apiUrl: 'https://a.example:8443' });
      await b.start({ sshEndpoint: B, apiUrl: null, internalAddress: '10.0.0.2:7000' });
      await a.beat();
      t.deepEqual(a.sshEndpoints(), [A, B]);
      t.deepEqual(b.sshEndpoints(), [B, A], 'this node first');
      t.like(await store.findNode(b.identity.id), { sshEndpoint: 'b.example:2223', internalAddress: '10.0.0.2:7000', version: '9.9.9', downAt: null });

      const d = device();
      await store.insertDevice(d);
      await store.setDeviceOnline(d.id, { online: true, since: now, remoteAddr: null, lastSeen: now, node: b.identity.id });
      advance(15);
      await a.beat();
      t.is((await store.listAudit({ action: 'node.down' })).items.length, 0, 'not yet');
      advance(10); // b's last beat is 25 s old
      await a.beat();
      await a.beat();
      const downs = (await store.listAudit({ action: 'node.down' })).items;
      t.is(downs.length, 1, 'once per down transition');
      t.like(downs[0], { actor: `node:${a.identity.id}`, target: b.identity.id, details: { devicesCleared: 1, sshEndpoint: 'b.example:2223' } });
      t.like(await store.findDevice(d.id), { online: false, nodeId: null });
      t.deepEqual(a.sshEndpoints(), [A]);

      await b.beat(); // it was only late: back up, a new transition possible
      t.is((await store.findNode(b.identity.id))?.downAt, null);
      await a.beat();
      t.deepEqual(a.sshEndpoints(), [A, B]);
      advance(30);
      await a.beat();
      t.is((await store.listAudit({ action: 'node.down' })).items.length, 2);

      await b.beat();
      await b.stop();
      advance(60);
      await a.beat();
      t.not((await store.findNode(b.identity.id))?.stoppedAt, null);
      t.is((await store.listAudit({ action: 'node.down' })).items.length, 2, 'a clean stop is not a death');
      t.deepEqual(a.sshEndpoints(), [A]);
      await a.stop();
    } finally {
      await store.close();
    }
  });
});

test('ok/a node starting clears the presence it left behind, and only its own', async (t) => {
  await withTempDir(async (dir) => {
    const store = await openStore({ filename: join(dir, 'broker.sqlite') });
    const now = new Date('2030-01-01T00:00:00Z');
    const config = parseConfig({ cluster: { heartbeatSeconds: 60 } }, dir);
    const options = (name: string) => ({ store, config, logger: createLogger('silent'), clock: () => now, paths: { node: join(dir, `${name}.json`) } });
    try {
      const first = await prepareClusterNode(options('a'));
      const other = await prepareClusterNode(options('b'));
      const [mine, theirs] = [device(), device()];
      for (const x of [mine, theirs]) await store.insertDevice(x);
      await store.setDeviceOnline(mine.id, { online: true, since: now, remoteAddr: null, lastSeen: now, node: first.identity.id });
      await store.setDeviceOnline(theirs.id, { online: true, since: now, remoteAddr: null, lastSeen: now, node: other.identity.id });
      // The same data directory again (a crash, then a restart): the same identity.
      const again = await prepareClusterNode(options('a'));
      t.is(again.identity.id, first.identity.id);
      t.like(await store.findDevice(mine.id), { online: false, nodeId: null });
      t.like(await store.findDevice(theirs.id), { online: true, nodeId: other.identity.id });
    } finally {
      await store.close();
    }
  });
});

test('ok/a heartbeat that fails (store closed) is logged, not thrown; the endpoints keep their last value', async (t) => {
  await withTempDir(async (dir) => {
    const store = await openStore({ filename: join(dir, 'broker.sqlite') });
    const config = parseConfig({ cluster: { heartbeatSeconds: 60 } }, dir);
    const a = await prepareClusterNode({ store, config, logger: createLogger('silent'), clock: () => new Date(), paths: { node: join(dir, 'a.json') } });
    await a.start({ sshEndpoint: A, apiUrl: null });
    await store.close();
    await t.notThrowsAsync(a.beat());
    t.deepEqual(a.sshEndpoints(), [A]);
  });
});
