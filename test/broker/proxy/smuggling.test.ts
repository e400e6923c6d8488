/**
 * Request smuggling through the proxy, by raw socket: a request whose
 * framing the relay would change must not let its body reach the device as
 * a second request that bypassed the broker's header rewriting and audit.
 */
import test from 'ava';
import { connect as tlsConnect } from 'node:tls';
import { DOMAIN, withFleet, type Fleet } from '../../../testkit/operator-fixture.js';
import { bearer, ca, get } from './helpers.js';

/** Writes REQUEST (the head's Host and Authorization filled in) over TLS; resolves with all the broker wrote, at its close. */
async function raw(f: Fleet, head: string, rest: string): Promise<string> {
  const auth = await bearer(f);
  const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `kiosk.${DOMAIN}`, ca: await ca(f) });
  let text = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within 20 s; got ${text}`));
    }, 20_000);
    socket.once('secureConnect', () => socket.write(`${head}\r\nHost: kiosk.${DOMAIN}\r\nAuthorization: ${auth.authorization}\r\nConnection: close\r\n${rest}`));
    socket.on('data', (c: Buffer) => (text += c.toString('latin1')));
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.once('error', reject);
  });
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: kiosk\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n';
const chunked = (body: string): string => `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;

test('fail/smuggling: a GET with a chunked body reaches the device as that body, never as a second request', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk', { connect: true });
    const answer = await raw(f, 'GET /echo HTTP/1.1', `Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`);
    t.regex(answer, /^HTTP\/1\.1 200 /);
    // Another request through the same kept-alive upstream connection: anything smuggled would have arrived by now.
    t.is((await get(f, 'kiosk', { headers: await bearer(f) })).status, 200);
    const urls = dev.http!.requests.map((r) => r.url);
    t.false(urls.includes('/smuggled'), `the device saw ${urls.join(', ')}`);
    const first = dev.http!.requests.find((r) => r.url === '/echo' && r.method === 'GET' && r.body !== '');
    t.is(first?.body, SMUGGLED, 'the body arrives as a body, re-framed as chunked');
  }));

test('fail/smuggling: a transfer coding the relay would drop is refused with REQUEST_FRAMING_REFUSED; nothing reaches the device', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk', { connect: true });
    for (const coding of ['gzip, chunked', 'deflate,chunked']) {
      const answer = await raw(f, 'POST /echo HTTP/1.1', `Transfer-Encoding: ${coding}\r\n\r\n${chunked(SMUGGLED)}`);
      t.regex(answer, /^HTTP\/1\.1 400 /, coding);
      t.regex(answer, /\r\nx-certunnel-error: REQUEST_FRAMING_REFUSED\r\n/i, coding);
    }
    t.deepEqual(dev.http!.requests, []);
    // Both Content-Length and Transfer-Encoding, or chunked twice: node's parser refuses them before the proxy sees them.
    for (const framing of ['Content-Length: 5\r\nTransfer-Encoding: chunked', 'Transfer-Encoding: chunked, chunked']) {
      const refused = await raw(f, 'POST /echo HTTP/1.1', `${framing}\r\n\r\n${chunked(SMUGGLED)}`);
      t.regex(refused, /^HTTP\/1\.1 400 /, framing);
    }
    t.deepEqual(dev.http!.requests, []);
  }));
