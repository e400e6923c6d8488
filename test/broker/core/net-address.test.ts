/**
 * The address rules: loopback, and the one client-address rule the API, the
 * HTTP proxy and nginx's auth_request share (the peer, or the last
 * X-Forwarded-For entry from a trusted proxy only).
 */
import test from 'ava';
import { clientAddressFrom, isLoopbackAddress } from '../../../broker/core/net-address.js';

test('client address: the peer, or the last X-Forwarded-For entry from a trusted proxy only', (t) => {
  t.is(clientAddressFrom('198.51.100.7', undefined, false), '198.51.100.7');
  t.is(clientAddressFrom('198.51.100.7', '203.0.113.1', false), '198.51.100.7', 'an untrusted peer cannot name another client');
  t.is(clientAddressFrom('127.0.0.1', '203.0.113.66, 198.51.100.9', true), '198.51.100.9', "the proxy's own entry, not what the client wrote");
  t.is(clientAddressFrom('127.0.0.1', ['203.0.113.66', '198.51.100.9 '], true), '198.51.100.9');
  t.is(clientAddressFrom('127.0.0.1', '', true), '127.0.0.1');
  t.is(clientAddressFrom(undefined, undefined, false), null);
  for (const addr of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) t.true(isLoopbackAddress(addr), addr);
  for (const addr of ['10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', undefined]) t.false(isLoopbackAddress(addr), String(addr));
});

const cases: Array<[string, string | undefined, string | string[] | undefined, boolean, string | null]> = [
  ['ok/untrusted-peer-no-header', '198.51.100.7', undefined, false, '198.51.100.7'],
  ['ok/untrusted-peer-header-ignored', '198.51.100.7', '203.0.113.1, 203.0.113.2', false, '198.51.100.7'],
  ['ok/trusted-one-entry', '10.0.0.2', '203.0.113.1', true, '203.0.113.1'],
  ['ok/trusted-last-entry', '10.0.0.2', '203.0.113.66, 203.0.113.1', true, '203.0.113.1'],
  ['ok/trusted-no-spaces', '10.0.0.2', '203.0.113.66,203.0.113.1', true, '203.0.113.1'],
  ['ok/trusted-ipv6', '::1', '2001:db8::1', true, '2001:db8::1'],
  ['ok/trusted-header-lines-in-order', '10.0.0.2', ['203.0.113.66', '203.0.113.1'], true, '203.0.113.1'],
  ['ok/trusted-empty-last-entry-is-the-peer', '10.0.0.2', '203.0.113.66, ', true, '10.0.0.2'],
  ['ok/trusted-no-header-is-the-peer', '10.0.0.2', undefined, true, '10.0.0.2'],
  ['ok/trusted-no-lines-is-the-peer', '10.0.0.2', [], true, '10.0.0.2'],
  ['ok/no-peer', undefined, '203.0.113.1', false, null],
];
for (const [name, peer, header, trusted, want] of cases) test(`client address ${name}`, (t) => t.is(clientAddressFrom(peer, header, trusted), want));
