/** Nodes, presence per node and node join tokens (broker/store/nodes.ts), on both backends. */
import { HOUR, T0, at, device, test, withStore } from './fixtures.js';

const node = (id: string, over: Record<string, unknown> = {}) => ({
  id, name: `host-${id}`, sshEndpoint: `${id}.example:2222`, apiUrl: `https://${id}.example:8443`, internalAddress: `10.0.0.1:7000`,
  relayKey: null, version: '0.4.0', startedAt: T0, ...over,
});

test('ok/nodes register, heart-beat, stop, re-register', async (t) => {
  await withStore(async (store) => {
    await store.registerNode(node('node_a'));
    await store.registerNode(node('node_b', { startedAt: at(1) }));
    t.deepEqual((await store.listNodes()).map((n) => [n.id, n.heartbeatAt.getTime(), n.stoppedAt]), [['node_a', T0.getTime(), null], ['node_b', at(1).getTime(), null]]);
    t.true(await store.heartbeatNode('node_a', at(5000)));
    t.false(await store.heartbeatNode('node_unknown', at(5000)));
    await store.markNodeStopped('node_b', at(6000));
    t.deepEqual((await store.findNode('node_b'))?.stoppedAt, at(6000));
    // A restart with a new endpoint: same row, updated, running again.
    await store.registerNode(node('node_b', { sshEndpoint: 'b2.example:2222', startedAt: at(7000) }));
    t.like(await store.findNode('node_b'), { sshEndpoint: 'b2.example:2222', stoppedAt: null, heartbeatAt: at(7000) });
    t.is(await store.findNode('node_x'), null);
  });
});

test('ok/presence per node: a takeover is not undone by the old node going offline; a dead node\'s presence is cleared', async (t) => {
  await withStore(async (store) => {
    const d = device();
    await store.insertDevice(d);
    await store.setDeviceOnline(d.id, { online: true, since: at(1), remoteAddr: '192.0.2.1', lastSeen: at(1), node: 'node_a' });
    t.like(await store.findDevice(d.id), { online: true, nodeId: 'node_a' });
    // The device reconnects to node B; then A's stale session ends.
    await store.setDeviceOnline(d.id, { online: true, since: at(2), remoteAddr: '192.0.2.2', lastSeen: at(2), node: 'node_b' });
    await store.setDeviceOnline(d.id, { online: false, since: null, remoteAddr: null, lastSeen: at(3), node: 'node_a' });
    t.like(await store.findDevice(d.id), { online: true, nodeId: 'node_b', remoteAddr: '192.0.2.2' });
    // B's own offline goes through.
    await store.setDeviceOnline(d.id, { online: false, since: null, remoteAddr: null, lastSeen: at(4), node: 'node_b' });
    t.like(await store.findDevice(d.id), { online: false, nodeId: null });
    // B dies holding it: its presence is cleared, others' untouched.
    const e = device();
    await store.insertDevice(e);
    await store.setDeviceOnline(d.id, { online: true, since: at(5), remoteAddr: null, lastSeen: at(5), node: 'node_b' });
    await store.setDeviceOnline(e.id, { online: true, since: at(5), remoteAddr: null, lastSeen: at(5), node: 'node_a' });
    t.is(await store.clearPresenceOfNode('node_b', at(6)), 1);
    t.like(await store.findDevice(d.id), { online: false, nodeId: null });
    t.like(await store.findDevice(e.id), { online: true, nodeId: 'node_a' });
    t.is((await store.countDevicesByStatus()).online, 1);
    // Without a node (a single broker, as before): unconditional.
    await store.setDeviceOnline(e.id, { online: false, since: null, remoteAddr: null, lastSeen: at(7) });
    t.like(await store.findDevice(e.id), { online: false });
  });
});

test('ok/node join tokens redeem once, before expiry only, in parallel too', async (t) => {
  await withStore(async (store) => {
    const tok = { id: 'njt_1', tokenHash: 'h1', sealed: 'sealed-bytes', createdAt: T0, createdBy: 'apikey:a', expiresAt: at(HOUR) };
    await store.insertNodeJoinToken(tok);
    await store.insertNodeJoinToken({ ...tok, id: 'njt_2', tokenHash: 'h2', expiresAt: at(10) });
    t.is(await store.redeemNodeJoinToken('h2', 'node_x', at(10)), null, 'expired');
    t.is(await store.redeemNodeJoinToken('nope', 'node_x', at(1)), null);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.redeemNodeJoinToken('h1', `node_${i}`, at(1))));
    t.deepEqual(results.filter((r) => r !== null), ['sealed-bytes']);
    t.is(await store.redeemNodeJoinToken('h1', 'node_y', at(2)), null);
  });
});

test('ok/a stale node is marked down once (compare-and-swap), never a stopped or fresh one; a heartbeat clears it', async (t) => {
  await withStore(async (store) => {
    await store.registerNode(node('node_a'));
    await store.registerNode(node('node_b'));
    await store.registerNode(node('node_c'));
    await store.markNodeStopped('node_c', at(10));
    t.true(await store.heartbeatNode('node_b', at(30_000)));
    // node_a's heartbeat (T0) is older than at(20_000); node_b's is not; node_c stopped cleanly.
    const marks = await Promise.all(Array.from({ length: 10 }, () => store.markNodeDown('node_a', at(20_000), at(40_000))));
    t.is(marks.filter(Boolean).length, 1);
    t.false(await store.markNodeDown('node_b', at(20_000), at(40_000)), 'fresh');
    t.false(await store.markNodeDown('node_c', at(20_000), at(40_000)), 'stopped');
    t.false(await store.markNodeDown('node_x', at(20_000), at(40_000)), 'unknown');
    t.deepEqual((await store.findNode('node_a'))?.downAt, at(40_000));
    // It comes back: the heartbeat clears the mark, and a later death is a new transition.
    t.true(await store.heartbeatNode('node_a', at(50_000)));
    t.is((await store.findNode('node_a'))?.downAt, null);
    t.true(await store.markNodeDown('node_a', at(70_000), at(80_000)));
    await store.registerNode(node('node_a', { startedAt: at(90_000) }));
    t.is((await store.findNode('node_a'))?.downAt, null);
  });
});

test('ok/devices online are counted per node', async (t) => {
  await withStore(async (store) => {
    const [d, e, f, g] = [device(), device(), device(), device()];
    for (const x of [d, e, f, g]) await store.insertDevice(x);
    await store.setDeviceOnline(d.id, { online: true, since: at(1), remoteAddr: null, lastSeen: at(1), node: 'node_a' });
    await store.setDeviceOnline(e.id, { online: true, since: at(1), remoteAddr: null, lastSeen: at(1), node: 'node_a' });
    await store.setDeviceOnline(f.id, { online: true, since: at(1), remoteAddr: null, lastSeen: at(1), node: 'node_b' });
    // Online without a node (a single broker that never said) is not any node's.
    await store.setDeviceOnline(g.id, { online: true, since: at(1), remoteAddr: null, lastSeen: at(1) });
    t.deepEqual(await store.countOnlineDevicesByNode(), { node_a: 2, node_b: 1 });
    await store.setDeviceOnline(f.id, { online: false, since: null, remoteAddr: null, lastSeen: at(2), node: 'node_b' });
    t.deepEqual(await store.countOnlineDevicesByNode(), { node_a: 2 });
  });
});
