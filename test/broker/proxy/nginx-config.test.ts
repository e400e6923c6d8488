/**
 * renderNginxConfig against golden files (input → the exact text earlier
 * releases generated), and its device-name pattern against the one rule for
 * device names (api/tunnel.ts). nginx itself is the referee in nginx.test.ts.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { DEVICE_NAME } from '../../../api/index.js';
import { isBrokerError } from '../../../broker/core/errors.js';
import { renderNginxConfig, type NginxConfigInput } from '../../../broker/proxy/nginx-config.js';

const golden: Array<[string, NginxConfigInput]> = [
  ['tls-https-broker', { domain: 'fleet.example.com', brokerUrl: 'https://127.0.0.1:8443', brokerCertificate: '/srv/certunnel/tls/api.crt', tls: { certificate: '/etc/ssl/fleet.crt', key: '/etc/ssl/fleet.key' } }],
  ['plain-pooled', { domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443', pool: { first: 20000, last: 20005, perDevice: 2 } }],
  ['ipv6-broker-pool-of-3', { domain: 'a.b', brokerUrl: 'http://[::1]:80', pool: { first: 20000, last: 20010, perDevice: 3 }, apiHostnames: ['api.a.b'], listenPort: 8080 }],
  ['https-broker-tls-name-pool-of-4', { domain: 'x-1.example', brokerUrl: 'https://broker.example', brokerCertificate: '/c', brokerTlsName: 'n.example', pool: { first: 1024, last: 1030, perDevice: 4 } }],
];
for (const [name, input] of golden) {
  test(`ok/golden ${name}`, async (t) => {
    t.is(renderNginxConfig(input), await readFile(new URL(`golden/nginx-${name}.conf`, import.meta.url), 'utf8'));
  });
}

test('ok/the server_name pattern takes exactly the device names', (t) => {
  const text = renderNginxConfig({ domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443' });
  const pattern = /server_name "~(\^\(\?<certunnel_device>.*\$)";/.exec(text)![1]!;
  // nginx's PCRE and JavaScript read this pattern alike (a named group, classes, counted repeats).
  const nginx = new RegExp(pattern);
  const names = ['kiosk-42', 'a', '0', 'a'.repeat(63), 'a'.repeat(64), '-x', 'x-', 'dev_1', 'Kiosk', 'a.b', '', 'k--1'];
  for (const name of names) t.is(nginx.test(`${name}.fleet.example.com`), DEVICE_NAME.test(name), JSON.stringify(name));
});

const pools: Array<[string, NginxConfigInput['pool']]> = [
  ['fail/one-port-per-device (no http slot)', { first: 20000, last: 20001, perDevice: 1 }],
  ['fail/port-zero', { first: 0, last: 20001, perDevice: 2 }],
  ['fail/past-65535', { first: 65534, last: 65536, perDevice: 2 }],
  ['fail/reversed', { first: 20001, last: 20000, perDevice: 2 }],
  ['fail/fractional', { first: 20000.5, last: 20010, perDevice: 2 }],
  ['fail/smaller-than-one-block', { first: 20000, last: 20000, perDevice: 2 }],
];
for (const [name, pool] of pools) {
  test(`pool ${name}`, (t) => {
    const err = t.throws(() => renderNginxConfig({ domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443', pool }));
    t.true(isBrokerError(err, 'BAD_REQUEST'));
  });
}
