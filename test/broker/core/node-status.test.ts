/** broker/core/node-status.ts: a node's status, and the SSH endpoints devices are told about. */
import test from 'ava';
import { formatHostPort, nodeStatus, parseHostPort, upSshEndpoints } from '../../../broker/core/node-status.js';
import type { NodeRecord } from '../../../broker/store/types.js';

const NOW = new Date('2030-01-01T00:01:00Z');
const ago = (s: number) => new Date(NOW.getTime() - s * 1000);
const node = (id: string, over: Partial<NodeRecord> = {}): NodeRecord => ({
  id, name: id, sshEndpoint: `${id}.example:2222`, apiUrl: null, internalAddress: null, relayKey: null, version: '1',
  startedAt: ago(60), heartbeatAt: ago(1), stoppedAt: null, downAt: null, rotationAck: null, ...over,
});

for (const [name, over, expected] of [
  ['ok/fresh', {}, 'up'],
  ['ok/just-within', { heartbeatAt: ago(20) }, 'up'],
  ['fail/stale', { heartbeatAt: ago(21) }, 'down'],
  ['fail/marked-down', { downAt: ago(0) }, 'down'],
  ['ok/stopped-wins', { stoppedAt: ago(30), heartbeatAt: ago(50) }, 'stopped'],
] as const) {
  test(`status ${name}`, (t) => t.is(nodeStatus(node('n', over), NOW, 20), expected));
}

test('endpoints: self first even when its row says otherwise, then the nodes up, each address once', (t) => {
  const nodes = [
    node('a', { heartbeatAt: ago(100) }), // self: stale row, but it is the one answering
    node('b', { sshEndpoint: 'lb.example:2222' }),
    node('c', { sshEndpoint: 'lb.example:2222' }), // behind the same load balancer
    node('d', { heartbeatAt: ago(30) }),
    node('e', { stoppedAt: ago(1) }),
    node('f', { sshEndpoint: '[2001:db8::1]:2222' }),
    node('g', { sshEndpoint: 'garbage' }),
  ];
  t.deepEqual(upSshEndpoints(nodes, { id: 'a', endpoint: { host: 'a.example', port: 2222 } }, NOW, 20), [
    { host: 'a.example', port: 2222 }, { host: 'lb.example', port: 2222 }, { host: '2001:db8::1', port: 2222 },
  ]);
  t.deepEqual(upSshEndpoints(nodes, { id: 'b', endpoint: { host: 'lb.example', port: 2222 } }, NOW, 20), [
    { host: 'lb.example', port: 2222 }, { host: '2001:db8::1', port: 2222 },
  ]);
});

test('host:port round-trips, IPv6 in brackets', (t) => {
  for (const e of [{ host: 'x.example', port: 22 }, { host: '2001:db8::1', port: 2222 }, { host: '10.0.0.1', port: 65535 }]) t.deepEqual(parseHostPort(formatHostPort(e)), e);
  t.is(parseHostPort('x.example:0'), undefined);
  t.is(parseHostPort(':22'), undefined);
});
