/** Several nodes: a device view names the node holding its tunnel while it is online there, and only then. */
import test from 'ava';
import type { DeviceView } from '../../../api/index.js';
import { withBroker } from '../../../testkit/broker.js';

test('ok/GET /v1/devices/:id says which node holds an online device\'s tunnel; offline, no node', async (t) => {
  await withBroker(async (b) => {
    const store = b.broker.store;
    const at = new Date();
    await store.insertDevice({
      id: 'dev_nodeview0000001', name: 'on-node-b', hardwareSerial: null, publicKey: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x',
      keyFingerprint: 'SHA256:nodeview', labels: {}, tokenId: null, createdAt: at,
    });
    const view = () => b.call<DeviceView>(b.admin, 'GET', '/v1/devices/on-node-b');
    t.is((await view()).node, undefined);
    await store.setDeviceOnline('dev_nodeview0000001', { online: true, since: at, remoteAddr: '192.0.2.7', lastSeen: at, node: 'node_bbbbbbbbbbbbbbbb' });
    t.like(await view(), { online: true, node: 'node_bbbbbbbbbbbbbbbb' });
    const listed = await b.call<{ items: DeviceView[] }>(b.admin, 'GET', '/v1/devices?name=on-node-b');
    t.is(listed.items[0]?.node, 'node_bbbbbbbbbbbbbbbb');
    await store.setDeviceOnline('dev_nodeview0000001', { online: false, since: null, remoteAddr: null, lastSeen: at, node: 'node_bbbbbbbbbbbbbbbb' });
    t.is((await view()).node, undefined);
  });
});
