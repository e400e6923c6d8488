/** agent/tunnel-spec.ts: the forwards a port block implies for the configured services. */
import test from 'ava';
import { parseAgentConfig } from '../../agent/config.js';
import { forwardsFor } from '../../agent/tunnel-spec.js';

const services = parseAgentConfig({ services: { http: '127.0.0.1:8080', mqtt: { slot: 2, target: '127.0.0.1:1883' } } }).services;

test('ok/each service at first + slot, to its local target', (t) => {
  const { forwards, skipped } = forwardsFor(services, { first: 20000, last: 20002 });
  t.deepEqual(forwards.map((f) => [f.name, f.remotePort, f.localHost, f.localPort]), [
    ['ssh', 20000, '127.0.0.1', 22],
    ['http', 20001, '127.0.0.1', 8080],
    ['mqtt', 20002, '127.0.0.1', 1883],
  ]);
  t.deepEqual(skipped, []);
});

test('fail/a slot past the end of the block gets no forward and is reported', (t) => {
  const { forwards, skipped } = forwardsFor(services, { first: 20000, last: 20001 });
  t.deepEqual(forwards.map((f) => f.remotePort), [20000, 20001]);
  t.deepEqual(skipped, [{ service: 'mqtt', slot: 2, blockSize: 2 }]);
});

test('fail/a one-port block forwards slot 0 only', (t) => {
  const { forwards, skipped } = forwardsFor(services, { first: 20010, last: 20010 });
  t.deepEqual(forwards.map((f) => f.name), ['ssh']);
  t.deepEqual(skipped.map((s) => s.service), ['http', 'mqtt']);
});
