/**
 * The HTTP proxy's pure parts, table-driven: which hosts are devices, the
 * session cookie, cookie stripping, hop-by-hop and forwarding headers, the
 * post-login redirect.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { deviceHostMatcher } from '../../../broker/proxy/hostname.js';
import { downstreamHeaders, upstreamHeaders } from '../../../broker/proxy/forwarded-headers.js';
import { safeNext } from '../../../broker/proxy/pages.js';
import { readCookie, SESSION_COOKIE, signSession, stripCookie, verifySession } from '../../../broker/proxy/session-cookie.js';

const match = deviceHostMatcher('fleet.example.com', ['fleet.example.com', 'api.fleet.example.com', 'localhost', '127.0.0.1']);
const hosts: Array<[string, string | undefined, string | undefined]> = [
  ['ok/name', 'kiosk-42.fleet.example.com', 'kiosk-42'],
  ['ok/with-port', 'kiosk-42.fleet.example.com:8443', 'kiosk-42'],
  ['ok/upper-case', 'KIOSK-42.Fleet.Example.COM', 'kiosk-42'],
  ['ok/trailing-dot', 'kiosk-42.fleet.example.com.', 'kiosk-42'],
  ['api/domain-itself', 'fleet.example.com', undefined],
  ['api/reserved-name', 'api.fleet.example.com', undefined],
  ['api/other-domain', 'kiosk-42.evil.example', undefined],
  ['api/suffix-lookalike', 'kiosk-42.notfleet.example.com', undefined],
  ['api/two-labels', 'a.kiosk-42.fleet.example.com', undefined],
  ['api/ip', '127.0.0.1:8443', undefined],
  ['api/ipv6', '[::1]:8443', undefined],
  ['api/none', undefined, undefined],
  ['api/leading-hyphen', '-x.fleet.example.com', undefined],
  ['api/underscore', 'dev_abc.fleet.example.com', undefined],
];
for (const [name, host, want] of hosts) test(`host ${name}`, (t) => t.is(match(host), want));

test('session cookie: genuine for its host until expiry; tampered, other host, other key, expired are not', (t) => {
  const secret = randomBytes(32);
  const now = new Date('2026-01-01T00:00:00Z');
  const value = signSession(secret, { keyId: 'key_abcdefghijklmnop', host: 'kiosk-1.fleet.example.com', expiresAt: new Date(now.getTime() + 3600_000) });
  t.regex(value, /^v1\.key_abcdefghijklmnop\.\d+\.[A-Za-z0-9_-]{43}$/);
  t.like(verifySession(secret, value, 'kiosk-1.fleet.example.com', now), { keyId: 'key_abcdefghijklmnop' });
  t.is(verifySession(secret, value, 'kiosk-2.fleet.example.com', now), undefined, 'other host');
  t.is(verifySession(randomBytes(32), value, 'kiosk-1.fleet.example.com', now), undefined, 'other broker key');
  t.is(verifySession(secret, value, 'kiosk-1.fleet.example.com', new Date(now.getTime() + 3600_000)), undefined, 'expired');
  const [v, id, exp, mac] = value.split('.');
  t.is(verifySession(secret, [v, id, String(Number(exp) + 3600), mac].join('.'), 'kiosk-1.fleet.example.com', now), undefined, 'extended expiry');
  t.is(verifySession(secret, [v, 'key_bbbbbbbbbbbbbbbb', exp, mac].join('.'), 'kiosk-1.fleet.example.com', now), undefined, 'other key id');
  for (const junk of ['', 'v1', 'v2.key_abcdefghijklmnop.1.x', `${value}.x`]) t.is(verifySession(secret, junk, 'kiosk-1.fleet.example.com', now), undefined, junk);
});

test('cookies: read ours, strip only ours', (t) => {
  const header = `a=1; ${SESSION_COOKIE}=v1.x; b=2`;
  t.is(readCookie(header, SESSION_COOKIE), 'v1.x');
  t.is(stripCookie(header, SESSION_COOKIE), 'a=1; b=2');
  t.is(stripCookie(`${SESSION_COOKIE}=v1.x`, SESSION_COOKIE), undefined);
  t.is(stripCookie('certunnel=1; x__Host-certunnel=2', SESSION_COOKIE), 'certunnel=1; x__Host-certunnel=2');
  t.is(readCookie(undefined, SESSION_COOKIE), undefined);
});

function rawOf(headers: Record<string, string>): { rawHeaders: string[]; headers: Record<string, string> } {
  const lower: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) lower[k.toLowerCase()] = v;
  return { rawHeaders: Object.entries(headers).flat(), headers: lower };
}

function toMap(raw: string[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (let i = 0; i < raw.length; i += 2) m.set(raw[i]!.toLowerCase(), [...(m.get(raw[i]!.toLowerCase()) ?? []), raw[i + 1]!]);
  return m;
}

test('request headers: hop-by-hop and Connection-listed dropped, credentials replaced, X-Forwarded-* set or extended', (t) => {
  const req = rawOf({
    Host: 'kiosk-1.fleet.example.com', Connection: 'keep-alive, X-Secret-Hop', 'X-Secret-Hop': '1', 'Keep-Alive': 'timeout=5', TE: 'trailers',
    'Proxy-Authorization': 'Basic eA==', Authorization: 'Bearer ctk_key_x.y', Cookie: `${SESSION_COOKIE}=v1; a=1`, Expect: '100-continue',
    'X-Forwarded-For': '203.0.113.1', Forwarded: 'for=203.0.113.1', 'X-Real-IP': '203.0.113.1', 'X-Custom': 'kept',
  });
  const direct = toMap(upstreamHeaders(req, { authorization: undefined, cookie: 'a=1' }, { remoteAddr: '198.51.100.7', encrypted: true, behindProxy: false, upgrade: false }));
  for (const gone of ['connection', 'x-secret-hop', 'keep-alive', 'te', 'proxy-authorization', 'authorization', 'expect', 'forwarded', 'x-real-ip']) t.false(direct.has(gone), gone);
  t.deepEqual(direct.get('cookie'), ['a=1']);
  t.deepEqual(direct.get('x-forwarded-for'), ['198.51.100.7'], 'a client cannot choose its own X-Forwarded-For');
  t.deepEqual(direct.get('x-forwarded-proto'), ['https']);
  t.deepEqual(direct.get('x-forwarded-host'), ['kiosk-1.fleet.example.com']);
  t.deepEqual(direct.get('host'), ['kiosk-1.fleet.example.com']);
  t.deepEqual(direct.get('x-custom'), ['kept']);

  const behind = toMap(upstreamHeaders(rawOf({ Host: 'k.fleet.example.com', 'X-Forwarded-For': '203.0.113.1', 'X-Forwarded-Proto': 'https', Forwarded: 'for=203.0.113.1' }), { authorization: 'Basic ZDpw', cookie: undefined }, { remoteAddr: '10.0.0.2', encrypted: false, behindProxy: true, upgrade: false }));
  t.deepEqual(behind.get('x-forwarded-for'), ['203.0.113.1, 10.0.0.2']);
  t.deepEqual(behind.get('x-forwarded-proto'), ['https']);
  t.deepEqual(behind.get('forwarded'), ['for=203.0.113.1'], "the trusted proxy's Forwarded stays");
  t.deepEqual(behind.get('authorization'), ['Basic ZDpw']);

  const upgrade = toMap(upstreamHeaders(rawOf({ Host: 'k', Connection: 'Upgrade', Upgrade: 'websocket' }), { authorization: undefined, cookie: undefined }, { remoteAddr: '::1', encrypted: true, behindProxy: false, upgrade: true }));
  t.deepEqual(upgrade.get('connection'), ['Upgrade']);
  t.deepEqual(upgrade.get('upgrade'), ['websocket']);
});

test('request headers behind a trusted proxy on HTTPS (api.trustProxy without insecureHttp): its X-Forwarded-Proto, else https', (t) => {
  const ctx = { remoteAddr: '10.0.0.2', encrypted: true, behindProxy: true, upgrade: false };
  const noProto = toMap(upstreamHeaders(rawOf({ Host: 'k.fleet.example.com', 'X-Forwarded-For': '203.0.113.1' }), { authorization: undefined, cookie: undefined }, ctx));
  t.deepEqual(noProto.get('x-forwarded-for'), ['203.0.113.1, 10.0.0.2']);
  t.deepEqual(noProto.get('x-forwarded-proto'), ['https']);
  const withProto = toMap(upstreamHeaders(rawOf({ Host: 'k.fleet.example.com', 'X-Forwarded-Proto': 'http' }), { authorization: undefined, cookie: undefined }, ctx));
  t.deepEqual(withProto.get('x-forwarded-proto'), ['http']);
});

test('response headers: hop-by-hop dropped, the broker cookie cannot be set by a device, the rest kept in order', (t) => {
  const out = downstreamHeaders(['Content-Type', 'text/html', 'Connection', 'keep-alive', 'Keep-Alive', 'timeout=5', 'Transfer-Encoding', 'chunked', 'Set-Cookie', `${SESSION_COOKIE}=evil; Path=/`, 'Set-Cookie', 'sid=1', 'Set-Cookie', 'sid2=2'], 'keep-alive');
  t.deepEqual(out, ['Content-Type', 'text/html', 'Set-Cookie', 'sid=1', 'Set-Cookie', 'sid2=2']);
});

const nexts: Array<[string | undefined, string]> = [
  ['/admin?x=1', '/admin?x=1'],
  [undefined, '/'],
  ['//evil.example/', '/'],
  ['/\\evil.example', '/'],
  ['https://evil.example/', '/'],
  ['javascript:alert(1)', '/'],
  ['/.certunnel/logout', '/'],
  ['/ok\r\nSet-Cookie: x=1', '/'],
  // Browsers strip tabs and newlines from URLs: "/\t/evil.example/x" is "//evil.example/x", another origin.
  ['/\t/evil.example/x', '/'],
  ['/\n/evil.example/x', '/'],
  ['/\r/evil.example/x', '/'],
  ['/\u0000/evil.example', '/'],
  ['/\u007f/x', '/'],
  ['/\\\\evil.example', '/'],
  ['\t//evil.example', '/'],
  [' /admin', '/'],
  ['/%2F%2Fevil.example', '/%2F%2Fevil.example'],
  ['/a/../.certunnel/logout', '/'],
  ['/%2e%2e/x', '/x'],
  ['http:/evil.example', '/'],
  ['/path?q=1#frag', '/path?q=1#frag'],
  ['/caf\u00e9', '/caf%C3%A9'],
];
for (const [input, want] of nexts) test(`post-login redirect ${JSON.stringify(input)}`, (t) => t.is(safeNext(input), want));
