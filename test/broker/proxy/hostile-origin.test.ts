/**
 * Attacks on operators' browsers through device hostnames, against a real
 * broker and real tunnels: a device's page posting to another device
 * (cross-device CSRF: every <x>.<domain> is one site, so SameSite=Strict
 * does not stop it) or opening a WebSocket to it (CSWSH), and garbage in
 * Origin on the login.
 */
import test from 'ava';
import { connect as tlsConnect } from 'node:tls';
import { DOMAIN, withFleet } from '../../../testkit/operator-fixture.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { bearer, ca, get, sessionCookie } from './helpers.js';

test('fail/cross-device CSRF: an unsafe method whose Origin (or Sec-Fetch-Site) is not the device\'s own is refused, unrelayed', (t) =>
  withFleet(async (f) => {
    const victim = await f.enroll('kiosk-b', { connect: true });
    await f.enroll('kiosk-a', { connect: true });
    const port = new URL(f.b.broker.apiUrl).port;
    const cookie = await sessionCookie(f, 'kiosk-b');
    const seen = (): number => victim.http!.requests.length;
    const before = seen();
    const post = (headers: Record<string, string>, method = 'POST') =>
      get(f, 'kiosk-b', { method, path: '/echo', body: 'reboot=1', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded', 'content-length': '8', ...headers } });
    const refusals: Array<[string, Record<string, string>, string?]> = [
      ['another device', { origin: `https://kiosk-a.${DOMAIN}:${port}` }],
      ['another device, DELETE', { origin: `https://kiosk-a.${DOMAIN}:${port}` }, 'DELETE'],
      ['another port', { origin: `https://kiosk-b.${DOMAIN}:1` }],
      ['plain http', { origin: `http://kiosk-b.${DOMAIN}:${port}` }],
      ['opaque (sandboxed frame)', { origin: 'null' }],
      ['garbage', { origin: 'http://[' }],
      ['no Origin, Sec-Fetch-Site same-site', { 'sec-fetch-site': 'same-site' }],
      ['no Origin, Sec-Fetch-Site cross-site', { 'sec-fetch-site': 'cross-site' }],
    ];
    for (const [what, headers, method] of refusals) {
      const res = await post(headers, method);
      t.is(res.status, 403, what);
      t.is(res.headers['x-certunnel-error'], 'CROSS_ORIGIN_REFUSED', what);
    }
    t.is(seen(), before, 'the device received none of them');
    // Its own origin, a same-origin fetch without Origin, and a tool with neither header go through.
    t.is((await post({ origin: `https://kiosk-b.${DOMAIN}:${port}` })).status, 200);
    t.is((await post({ 'sec-fetch-site': 'same-origin' })).status, 200);
    t.is((await post({})).status, 200);
    t.is((await get(f, 'kiosk-b', { headers: { cookie, origin: `https://kiosk-a.${DOMAIN}:${port}` } })).status, 200, 'a safe method is a link, not CSRF');
    t.is(seen(), before + 4);
  }));

/** A WebSocket handshake for NAME with HEADERS; resolves with the response head. */
async function handshake(f: Parameters<Parameters<typeof withFleet>[0]>[0], name: string, headers: Record<string, string>): Promise<string> {
  const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `${name}.${DOMAIN}`, ca: await ca(f) });
  const received: Buffer[] = [];
  socket.on('data', (c: Buffer) => received.push(c));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.write(`GET /ws HTTP/1.1\r\nHost: ${name}.${DOMAIN}:${f.b.broker.apiPort}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`);
  await waitFor(() => Buffer.concat(received).includes('\r\n\r\n'), 'the handshake answer');
  socket.destroy();
  return Buffer.concat(received).toString();
}

test('fail/cross-site WebSocket hijacking: an upgrade whose Origin is another device is refused', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-b', { connect: true });
    const cookie = await sessionCookie(f, 'kiosk-b');
    const port = f.b.broker.apiPort;
    const foreign = await handshake(f, 'kiosk-b', { Cookie: cookie, Origin: `https://kiosk-a.${DOMAIN}:${port}` });
    t.regex(foreign, /^HTTP\/1\.1 403 /);
    t.regex(foreign, /x-certunnel-error: CROSS_ORIGIN_REFUSED/i);
    t.regex(await handshake(f, 'kiosk-b', { Cookie: cookie, Origin: `https://kiosk-b.${DOMAIN}:${port}` }), /^HTTP\/1\.1 101 /);
    t.regex(await handshake(f, 'kiosk-b', { Authorization: (await bearer(f)).authorization! }), /^HTTP\/1\.1 101 /, 'a tool without Origin');
  }));
