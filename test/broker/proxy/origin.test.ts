/**
 * The browser rules of the proxy, as tables: which requests may act on a
 * device hostname (crossOriginRefusal), and one-time sign-in codes.
 */
import test from 'ava';
import type { IncomingHttpHeaders } from 'node:http';
import { isBrokerError } from '../../../broker/core/errors.js';
import { LOGIN_CODE_TTL_MS, LoginCodes } from '../../../broker/proxy/login-codes.js';
import { crossOriginRefusal, requestOrigin, schemeOf } from '../../../broker/proxy/origin.js';

const own = requestOrigin('https', 'kiosk-b.fleet.test:8443');
const cases: Array<[string, string, IncomingHttpHeaders, boolean, boolean]> = [
  // name, method, headers, upgrade, allowed
  ['ok/get-from-elsewhere', 'GET', { origin: 'https://kiosk-a.fleet.test:8443' }, false, true],
  ['ok/post-own-origin', 'POST', { origin: 'https://kiosk-b.fleet.test:8443' }, false, true],
  ['ok/post-own-origin-case', 'POST', { origin: 'HTTPS://KIOSK-B.fleet.test:8443' }, false, true],
  ['ok/post-no-headers-tool', 'POST', {}, false, true],
  ['ok/post-same-origin-fetch', 'PUT', { 'sec-fetch-site': 'same-origin' }, false, true],
  ['ok/post-user-navigation', 'POST', { 'sec-fetch-site': 'none' }, false, true],
  ['ok/options-preflight', 'OPTIONS', { origin: 'https://evil.example' }, false, true],
  ['ok/upgrade-own-origin', 'GET', { origin: 'https://kiosk-b.fleet.test:8443' }, true, true],
  ['fail/post-other-device', 'POST', { origin: 'https://kiosk-a.fleet.test:8443' }, false, false],
  ['fail/patch-other-port', 'PATCH', { origin: 'https://kiosk-b.fleet.test:9443' }, false, false],
  ['fail/delete-other-scheme', 'DELETE', { origin: 'http://kiosk-b.fleet.test:8443' }, false, false],
  ['fail/post-null', 'POST', { origin: 'null' }, false, false],
  ['fail/post-garbage', 'POST', { origin: 'http://[' }, false, false],
  ['fail/post-same-site', 'POST', { 'sec-fetch-site': 'same-site' }, false, false],
  ['fail/post-cross-site', 'POST', { 'sec-fetch-site': 'cross-site' }, false, false],
  ['fail/post-origin-wins-over-fetch-site', 'POST', { origin: 'https://kiosk-a.fleet.test:8443', 'sec-fetch-site': 'same-origin' }, false, false],
  ['fail/upgrade-other-device', 'GET', { origin: 'https://kiosk-a.fleet.test:8443' }, true, false],
  ['fail/upgrade-cross-site', 'GET', { 'sec-fetch-site': 'cross-site' }, true, false],
];
for (const [name, method, headers, upgrade, allowed] of cases) {
  test(`origin ${name}`, (t) => t.is(crossOriginRefusal({ method, headers, own, upgrade }) === undefined, allowed));
}

test('origin fail/unusable-host: nothing is its own origin', (t) => {
  for (const host of ['a@b', 'a/b', 'a?b', 'http://[', '']) t.is(requestOrigin('https', host), undefined, host);
  t.truthy(crossOriginRefusal({ method: 'POST', headers: { origin: 'https://a' }, own: undefined, upgrade: false }));
});

test('scheme: TLS, or a trusted proxy\'s first X-Forwarded-Proto; an untrusted one is ignored', (t) => {
  t.is(schemeOf({}, true, false), 'https');
  t.is(schemeOf({ 'x-forwarded-proto': 'https' }, false, false), 'http');
  t.is(schemeOf({ 'x-forwarded-proto': 'https, http' }, false, true), 'https');
  t.is(schemeOf({ 'x-forwarded-proto': 'gopher' }, false, true), 'http');
});

test('login codes: one use, one device, one minute; unknown codes refused', (t) => {
  let now = 1_700_000_000_000;
  const codes = new LoginCodes(() => new Date(now));
  const claims = { keyId: 'key_aaaaaaaaaaaaaaaa', deviceName: 'kiosk-a' };
  const code = codes.mint(claims);
  t.regex(code, /^[A-Za-z0-9_-]{43}$/);
  t.not(codes.mint(claims), code);
  t.deepEqual(codes.redeem(code, 'kiosk-a'), claims);
  t.true(isBrokerError(t.throws(() => codes.redeem(code, 'kiosk-a')), 'LOGIN_CODE_INVALID'), 'used twice');
  const other = codes.mint(claims);
  t.true(isBrokerError(t.throws(() => codes.redeem(other, 'kiosk-b')), 'LOGIN_CODE_INVALID'), 'another device');
  t.true(isBrokerError(t.throws(() => codes.redeem(other, 'kiosk-a')), 'LOGIN_CODE_INVALID'), 'spent by the wrong presentation');
  const late = codes.mint(claims);
  now += LOGIN_CODE_TTL_MS;
  t.true(isBrokerError(t.throws(() => codes.redeem(late, 'kiosk-a')), 'LOGIN_CODE_INVALID'), 'expired');
  t.true(isBrokerError(t.throws(() => codes.redeem('', 'kiosk-a')), 'LOGIN_CODE_INVALID'), 'empty');
});
