/** broker/compose/cluster-events.ts parseClusterEvent: ids only, checked; anything else is no event. */
import test from 'ava';
import { parseClusterEvent } from '../../../broker/compose/cluster-events.js';

test('ok/the three events', (t) => {
  t.deepEqual(parseClusterEvent('{"type" : "device.revoked", "deviceId" : "dev_abc123"}'), { type: 'device.revoked', deviceId: 'dev_abc123' });
  t.deepEqual(parseClusterEvent('{"type":"certificates.revoked","deviceId":"dev_a","serials":["1","18446744"]}'), { type: 'certificates.revoked', deviceId: 'dev_a', serials: [1n, 18446744n] });
  t.deepEqual(parseClusterEvent('{"type":"certificates.revoked","deviceId":"dev_a"}'), { type: 'certificates.revoked', deviceId: 'dev_a' });
  t.deepEqual(parseClusterEvent('{"type":"device.connected","deviceId":"dev_a","node":"node_0123456789abcdef","since":1000}'),
    { type: 'device.connected', deviceId: 'dev_a', node: 'node_0123456789abcdef', since: new Date(1000) });
});

const BAD: Array<[string, string]> = [
  ['fail/not-json', '{'],
  ['fail/not-an-object', '"device.revoked"'],
  ['fail/unknown-type', '{"type":"device.exploded","deviceId":"dev_a"}'],
  ['fail/bad-device-id', '{"type":"device.revoked","deviceId":"../../etc"}'],
  ['fail/no-device-id', '{"type":"device.revoked"}'],
  ['fail/serial-not-decimal', '{"type":"certificates.revoked","deviceId":"dev_a","serials":["0x10"]}'],
  ['fail/serial-zero', '{"type":"certificates.revoked","deviceId":"dev_a","serials":["0"]}'],
  ['fail/serial-a-number', '{"type":"certificates.revoked","deviceId":"dev_a","serials":[12]}'],
  ['fail/serials-not-a-list', '{"type":"certificates.revoked","deviceId":"dev_a","serials":"1"}'],
  ['fail/bad-node', '{"type":"device.connected","deviceId":"dev_a","node":"node_x","since":1}'],
  ['fail/since-not-a-number', '{"type":"device.connected","deviceId":"dev_a","node":"node_0123456789abcdef","since":"1"}'],
  ['fail/since-negative', '{"type":"device.connected","deviceId":"dev_a","node":"node_0123456789abcdef","since":-1}'],
];
for (const [name, payload] of BAD) test(name, (t) => t.is(parseClusterEvent(payload), null));

test('fail/too-many-serials', (t) => {
  const serials = Array.from({ length: 1001 }, (_, i) => String(i + 1));
  t.is(parseClusterEvent(JSON.stringify({ type: 'certificates.revoked', deviceId: 'dev_a', serials })), null);
});
