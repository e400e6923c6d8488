/**
 * The HTTP reverse proxy by hostname, through a real broker (HTTPS, its
 * init-made certificate covering *.<domain>) and real `ssh -R` tunnels to
 * small device web services: credentials, pages, headers, streaming,
 * keep-alive, WebSocket upgrades, revocation, and the nginx auth_request
 * endpoint.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request as httpsRequest } from 'node:https';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { waitFor } from '../../../testkit/ssh-client.js';
import { BIG_BLOCK, DOMAIN, deviceRequest, withFleet, type Fleet } from '../../../testkit/operator-fixture.js';
import { bearer, brokerLogin, ca, cookieOf, get, login } from './helpers.js';

test('ok/bearer API key: relayed to the http slot over TLS (*.domain), credentials stripped, X-Forwarded-* set', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const auth = await bearer(f);
    const res = await get(f, 'kiosk-a', { path: '/echo?q=1', headers: { ...auth, cookie: 'theme=dark', 'x-forwarded-for': '203.0.113.66', 'x-custom': 'kept' } });
    t.is(res.status, 200, res.body);
    t.is(res.headers['x-device'], 'kiosk-a');
    const seen = dev.http!.requests.at(-1)!;
    t.is(seen.url, '/echo?q=1');
    t.is(seen.headers.host, `kiosk-a.${DOMAIN}:${f.b.broker.apiPort}`);
    t.is(seen.headers.authorization, undefined, 'the API key never reaches the device');
    t.is(seen.headers.cookie, 'theme=dark');
    t.is(seen.headers['x-custom'], 'kept');
    // The broker terminates TLS itself here: a client's own X-Forwarded-For is not believed.
    t.is(seen.headers['x-forwarded-for'], '127.0.0.1');
    t.is(seen.headers['x-forwarded-proto'], 'https');
    t.is(seen.headers['x-forwarded-host'], `kiosk-a.${DOMAIN}:${f.b.broker.apiPort}`);
    // The API is still the API on the broker's own names.
    const health = await deviceRequest(f.b.broker.apiUrl, 'x', { path: '/healthz', headers: { host: `${DOMAIN}:${f.b.broker.apiPort}` } }, await ca(f));
    t.is(health.status, 200);
    t.is(health.body, '{"status":"ok"}');
    // proxy.access is audited once per operator and device, not per request.
    await get(f, 'kiosk-a', { headers: auth });
    const access = (await f.b.call<{ items: Array<{ target: string }> }>(f.b.admin, 'GET', '/v1/audit?action=proxy.access')).items;
    t.deepEqual(access.map((e) => e.target), [dev.grant.deviceId]);
  }));

test('ok/keep-alive upstream, streaming request and response bodies', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const auth = await bearer(f);
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: await ca(f), servername: `kiosk-a.${DOMAIN}` });
    try {
      for (let i = 0; i < 20; i++) t.is((await get(f, 'kiosk-a', { headers: auth, agent })).status, 200);
      t.is(dev.http!.connections(), 1, 'one upstream connection (one SSH channel) for 20 requests');

      const big = randomBytes(3 * 1024 * 1024);
      const up = await get(f, 'kiosk-a', { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: big, agent });
      t.is(up.status, 200);
      const echoed = JSON.parse(up.body) as { bodyBytes: number; bodySha256: string };
      t.is(echoed.bodyBytes, Buffer.from(big.toString('utf8')).length);
      t.is(echoed.bodySha256, createHash('sha256').update(big.toString('utf8')).digest('hex'));
    } finally {
      agent.destroy();
    }

    // A streamed response arrives as it is produced, not at the end: the
    // device writes each next chunk only once this reader has the last one.
    const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `kiosk-a.${DOMAIN}`, ca: await ca(f) });
    let text = '';
    let seen = 0;
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => socket.write(`GET /stream HTTP/1.1\r\nHost: kiosk-a.${DOMAIN}\r\nAuthorization: ${auth.authorization}\r\nConnection: close\r\n\r\n`));
      socket.on('data', (c: Buffer) => {
        text += c.toString();
        for (; text.includes(`chunk ${seen}\n`); seen++) dev.http!.streamNext();
      });
      socket.once('end', () => resolve());
      socket.once('error', reject);
    });
    t.regex(text, /chunk 0\n[\s\S]*chunk 1\n[\s\S]*chunk 2\n/);
    t.false(dev.http!.streamStalled(), 'every chunk reached the reader before the device wrote the next');
  }));

test('ok/a slow reader holds the device back (backpressure through proxy and tunnel), then gets every byte', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const auth = await bearer(f);
    const MIB = 48;
    const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `kiosk-a.${DOMAIN}`, ca: await ca(f) });
    t.teardown(() => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    socket.pause();
    socket.write(`GET /big?mib=${MIB} HTTP/1.1\r\nHost: kiosk-a.${DOMAIN}\r\nAuthorization: ${auth.authorization}\r\nConnection: close\r\n\r\n`);
    // The reader takes nothing: the device gets to write only what the buffers on the way hold.
    let last = -1;
    let steady = 0;
    await waitFor(() => {
      const now = dev.http!.bigWritten();
      steady = now === last && now > 0 ? steady + 1 : 0;
      last = now;
      return steady >= 8;
    }, 'the device to stall', 30_000);
    t.log(`stalled at ${last}`);
    t.true(last <= 16 * 1024 * 1024, `the device wrote ${last} bytes of ${MIB} MiB to a reader that took none`);
    // Then everything arrives, intact.
    const hash = createHash('sha256');
    let head = '';
    let bytes = 0;
    socket.on('data', (c: Buffer) => {
      if (!head.includes('\r\n\r\n')) {
        head += c.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const rest = Buffer.from(head.slice(end + 4), 'latin1');
        head = head.slice(0, end + 4);
        hash.update(rest);
        bytes += rest.length;
        return;
      }
      hash.update(c);
      bytes += c.length;
    });
    socket.resume();
    await new Promise((resolve) => socket.once('end', resolve));
    t.regex(head, /^HTTP\/1\.1 200 /);
    t.is(bytes, MIB * BIG_BLOCK.length);
    const expected = createHash('sha256');
    for (let i = 0; i < MIB; i++) expected.update(BIG_BLOCK);
    t.is(hash.digest('hex'), expected.digest('hex'));
  }));

test('ok/browser login: on the broker origin, HttpOnly Secure SameSite=Strict host-only cookie, never relayed, logout', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    await f.enroll('kiosk-b', { connect: true });
    const operatorKey = (await f.b.apiKey('operator')).apiKey!;

    const anon = await get(f, 'kiosk-a', { path: '/admin?tab=1' });
    t.is(anon.status, 401);
    t.is(anon.headers['x-certunnel-error'], 'UNAUTHENTICATED');
    t.is(anon.headers['www-authenticate'], 'Bearer realm="certunnel"');
    t.regex(String(anon.headers['content-type']), /^text\/html/);
    t.notRegex(anon.body, /<form/, 'no credential form on a device origin');
    t.regex(anon.body, /href="\/\.certunnel\/login\?next=%2Fadmin%3Ftab%3D1"/);

    const wrong = await login(f, 'kiosk-a', 'ctk_key_aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb');
    t.is(wrong.status, 401);
    t.regex(wrong.body, /That API key was not accepted/);
    t.is(wrong.headers['set-cookie'], undefined);
    const provisioner = await login(f, 'kiosk-a', (await f.b.apiKey('provisioner')).apiKey!);
    t.is(provisioner.status, 403);
    t.is(provisioner.headers['x-certunnel-error'], 'FORBIDDEN');
    const crossSite = await brokerLogin(f, 'kiosk-a', operatorKey, '/', { origin: 'https://evil.example' });
    t.is(crossSite.status, 403);
    t.is(crossSite.headers['set-cookie'], undefined);

    const ok = await login(f, 'kiosk-a', operatorKey, '/echo?x=1');
    t.is(ok.status, 303);
    t.is(ok.headers.location, '/echo?x=1');
    const setCookie = ok.headers['set-cookie']![0]!;
    t.regex(setCookie, /^__Host-certunnel=v1\.key_[a-z2-7]{16}\.\d+\.[A-Za-z0-9_-]+; Path=\/; Max-Age=28800; Secure; HttpOnly; SameSite=Strict$/);
    t.false(setCookie.includes(operatorKey.split('.')[1]!), 'the cookie does not carry the key');
    const cookie = cookieOf(ok.headers['set-cookie']);

    const after = await get(f, 'kiosk-a', { headers: { cookie: `a=1; ${cookie}; b=2`, authorization: 'Basic ZGV2aWNlOnB3' } });
    t.is(after.status, 200, after.body);
    const seen = dev.http!.requests.at(-1)!;
    t.is(seen.headers.cookie, 'a=1; b=2', 'the session cookie stays at the broker');
    t.is(seen.headers.authorization, 'Basic ZGV2aWNlOnB3', "the device's own credential goes through");

    // Bound to its hostname, tamper-evident.
    t.is((await get(f, 'kiosk-b', { headers: { cookie } })).status, 401);
    t.is((await get(f, 'kiosk-a', { headers: { cookie: cookie.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')) } })).status, 401);
    // A device cannot plant the broker's cookie.
    const planted = await get(f, 'kiosk-a', { path: '/set-cookie', headers: { cookie } });
    t.deepEqual(planted.headers['set-cookie'], ['device=1; Path=/']);
    // No open redirect after login.
    t.is((await login(f, 'kiosk-a', operatorKey, '//evil.example/')).headers.location, '/');

    const out = await get(f, 'kiosk-a', { path: '/.certunnel/logout', headers: { cookie } });
    t.is(out.status, 200);
    t.regex(out.headers['set-cookie']![0]!, /^__Host-certunnel=; Path=\/; Max-Age=0/);
    const logins = (await f.b.call<{ items: Array<{ outcome: string }> }>(f.b.admin, 'GET', '/v1/audit?action=proxy.login')).items.map((e) => e.outcome);
    t.deepEqual(logins.sort(), ['FORBIDDEN', 'UNAUTHENTICATED', 'ok', 'ok'], 'the cross-site post checked no key');
  }));

test('fail/pages: unknown 404, offline 502 "since", revoked 403, service down 502; no device facts before login', (t) =>
  withFleet(async (f) => {
    const auth = await bearer(f);
    const unknown = await get(f, 'kiosk-none', { headers: auth });
    t.is(unknown.status, 404);
    t.is(unknown.headers['x-certunnel-error'], 'DEVICE_UNKNOWN');
    t.regex(unknown.body, /There is no device named <strong>kiosk-none<\/strong>/);
    t.is((await get(f, 'kiosk-none')).status, 401, 'unauthenticated: nothing about the device');

    const idle = await f.enroll('kiosk-idle');
    const never = await get(f, 'kiosk-idle', { headers: auth });
    t.is(never.status, 502);
    t.is(never.headers['x-certunnel-error'], 'DEVICE_OFFLINE');
    t.regex(never.body, /offline: it has never connected/);
    await f.connect(idle);
    await f.disconnect(idle);
    const offline = await get(f, 'kiosk-idle', { headers: auth });
    t.is(offline.status, 502);
    const since = (await f.b.broker.store.findDevice(idle.grant.deviceId))!.lastSeenAt!.toISOString();
    t.regex(offline.body, new RegExp(`is offline since ${since.replace(/\./g, '\\.')} \\(\\d+ seconds ago\\)`));

    const gone = await f.enroll('kiosk-gone', { connect: true });
    t.is((await get(f, 'kiosk-gone', { headers: auth })).status, 200);
    await f.b.call(f.b.admin, 'POST', '/v1/devices/kiosk-gone/revoke', {});
    const revoked = await get(f, 'kiosk-gone', { headers: auth });
    t.is(revoked.status, 403);
    t.is(revoked.headers['x-certunnel-error'], 'DEVICE_REVOKED');
    t.regex(revoked.body, /was revoked on \d{4}-/);

    const down = await f.enroll('kiosk-down', { connect: true });
    await down.http!.close();
    const unavailable = await get(f, 'kiosk-down', { headers: auth });
    t.is(unavailable.status, 502);
    t.is(unavailable.headers['x-certunnel-error'], 'DEVICE_SERVICE_UNAVAILABLE');
    t.is(gone.http!.requests.length, 1);
  }));

/** An HTTP/1.1 Upgrade: websocket handshake by hand over TLS; resolves with the response head and the socket. */
function upgrade(f: Fleet, cert: string, name: string, headers: Record<string, string>): Promise<{ head: string; socket: TLSSocket; key: string }> {
  const key = randomBytes(16).toString('base64');
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `${name}.${DOMAIN}`, ca: cert });
    let buffered = '';
    socket.once('secureConnect', () => {
      const lines = [`GET /socket HTTP/1.1`, `Host: ${name}.${DOMAIN}`, 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13'];
      for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    });
    const onData = (c: Buffer): void => {
      buffered += c.toString('latin1');
      const end = buffered.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.off('data', onData);
      resolve({ head: buffered.slice(0, end), socket, key });
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

test('ok/WebSocket upgrade relayed both ways; refused without credentials; closed on revocation', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const cert = await ca(f);
    const auth = await bearer(f);
    const refused = await upgrade(f, cert, 'kiosk-a', {});
    t.regex(refused.head, /^HTTP\/1\.1 401 /);
    t.regex(refused.head, /x-certunnel-error: UNAUTHENTICATED/i);
    refused.socket.destroy();

    const { head, socket, key } = await upgrade(f, cert, 'kiosk-a', { Authorization: auth.authorization! });
    t.regex(head, /^HTTP\/1\.1 101 Switching Protocols/);
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    t.true(head.includes(`Sec-WebSocket-Accept: ${accept}`));
    const seen = dev.http!.requests.at(-1)!;
    t.is(seen.headers.upgrade, 'websocket');
    t.is(seen.headers.authorization, undefined);
    t.is(seen.headers['x-forwarded-proto'], 'https');
    // Bytes both ways (the device echoes).
    const payload = randomBytes(64 * 1024);
    const echoed: Buffer[] = [];
    socket.on('data', (c: Buffer) => echoed.push(c));
    socket.write(payload);
    await waitFor(() => Buffer.concat(echoed).length >= payload.length, 'the echo');
    t.true(Buffer.concat(echoed).equals(payload));
    // Revoking the device ends the relayed connection.
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const at = Date.now();
    await f.b.call(f.b.admin, 'POST', '/v1/devices/kiosk-a/revoke', {});
    await closed;
    t.true(Date.now() - at < 2000);
  }));

test('ok/GET /v1/proxy/authorize (nginx auth_request): port and credential-free headers, or 401/403 with a code', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    await f.enroll('kiosk-idle');
    const auth = await bearer(f);
    const cert = await ca(f);
    const call = (host: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; headers: Record<string, string | string[] | undefined> }>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port: f.b.broker.apiPort, path: '/v1/proxy/authorize', ca: cert, servername: 'localhost', headers: { 'x-forwarded-host': host, ...headers } }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
        });
        req.on('error', reject);
        req.end();
      });
    const ok = await call(`kiosk-a.${DOMAIN}`, { ...auth, cookie: 'x=1; __Host-certunnel=v1.key_aaaaaaaaaaaaaaaa.1.zz' });
    t.is(ok.status, 204);
    t.is(ok.headers['x-certunnel-upstream-port'], String(dev.grant.ports.first + 1));
    t.is(ok.headers['x-certunnel-device'], dev.grant.deviceId);
    t.is(ok.headers['x-certunnel-cookie'], 'x=1');
    t.is(ok.headers['x-certunnel-authorization'], '');
    const anon = await call(`kiosk-a.${DOMAIN}`);
    t.is(anon.status, 401);
    const offline = await call(`kiosk-idle.${DOMAIN}`, auth);
    t.is(offline.status, 403);
    t.is(offline.headers['x-certunnel-error'], 'DEVICE_OFFLINE');
    t.is((await call(`kiosk-none.${DOMAIN}`, auth)).headers['x-certunnel-error'], 'DEVICE_UNKNOWN');
    t.is((await call('elsewhere.example', auth)).status, 400);
    // nginx on this host names the client last in X-Forwarded-For: failures count per client, not per nginx.
    const wrong = { authorization: 'Bearer ctk_notakey0000000000000000000000000000000000' };
    for (let i = 0; i < 2; i++) t.is((await call(`kiosk-a.${DOMAIN}`, { ...wrong, 'x-forwarded-for': '198.51.100.1, 203.0.113.1' })).status, 401);
    const limited = await call(`kiosk-a.${DOMAIN}`, { ...wrong, 'x-forwarded-for': '198.51.100.2, 203.0.113.1' });
    t.is(limited.status, 403, 'nginx auth_request understands 401 and 403 only');
    t.is(limited.headers['x-certunnel-error'], 'RATE_LIMITED');
    t.truthy(limited.headers['retry-after']);
    t.is((await call(`kiosk-a.${DOMAIN}`, { ...wrong, 'x-forwarded-for': '203.0.113.2' })).status, 401, 'another client has its own failures');
  }, { config: { proxy: { authFailureBurst: 2, authFailuresPerMinute: 1 } } }));

test('ok/behind a TLS-terminating proxy (insecureHttp): X-Forwarded-* are extended, not replaced', (t) =>
  withFleet(
    async (f) => {
      const dev = await f.enroll('kiosk-a', { connect: true });
      const res = await deviceRequest(f.b.broker.apiUrl, 'kiosk-a', {
        headers: { ...(await bearer(f)), 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', 'x-forwarded-host': `kiosk-a.${DOMAIN}` },
      });
      t.is(res.status, 200);
      const seen = dev.http!.requests.at(-1)!;
      t.is(seen.headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1');
      t.is(seen.headers['x-forwarded-proto'], 'https');
      t.is(seen.headers['x-forwarded-host'], `kiosk-a.${DOMAIN}`);
    },
    { config: { api: { listen: '127.0.0.1:0', insecureHttp: true } } },
  ));

test('ok/OpenSSH mode: the proxy connects to the tunnel port itself; nothing listening is "offline"', (t) =>
  withFleet(
    async (f) => {
      const dev = await f.enroll('kiosk-o');
      const auth = await bearer(f);
      // Nothing holds the http slot yet: sshd would hold it for a connected device.
      const offline = await deviceRequest(f.b.broker.apiUrl, 'kiosk-o', { headers: auth });
      t.is(offline.status, 502);
      t.is(offline.headers['x-certunnel-error'], 'DEVICE_OFFLINE');
      // Stand in for sshd's listener on 127.0.0.1:<http slot>.
      const { createServer } = await import('node:http');
      const listener = createServer((req, res) => res.end(`sshd-forward ${req.headers['x-forwarded-host']}`));
      await new Promise<void>((resolve) => listener.listen(dev.grant.ports.first + 1, '127.0.0.1', resolve));
      const device = () => f.b.call<{ online: boolean; connectedSince: string | null; lastSeenAt: string | null }>(f.b.admin, 'GET', `/v1/devices/${dev.grant.deviceId}`);
      try {
        const ok = await deviceRequest(f.b.broker.apiUrl, 'kiosk-o', { headers: auth });
        t.is(ok.status, 200);
        t.is(ok.body, `sshd-forward kiosk-o.${DOMAIN}:${f.b.broker.apiPort}`);
        // Presence from the kernel's listening sockets (ssh.presencePollSeconds).
        await waitFor(async () => (await device()).online, 'kiosk-o online', 10_000);
        t.truthy((await device()).connectedSince);
      } finally {
        await new Promise((resolve) => listener.close(resolve));
      }
      await waitFor(async () => !(await device()).online, 'kiosk-o offline', 10_000);
      t.truthy((await device()).lastSeenAt);
      const gone = await deviceRequest(f.b.broker.apiUrl, 'kiosk-o', { headers: auth });
      t.is(gone.status, 502);
      t.regex(gone.body, /is offline since \d{4}-/, 'offline since it was last seen, not "never connected"');
    },
    { config: { api: { listen: '127.0.0.1:0', insecureHttp: true }, ssh: { mode: 'openssh', listen: '127.0.0.1:0', presencePollSeconds: 1 } } },
  ));
