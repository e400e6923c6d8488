/**
 * API keys at the HTTP proxy, through a real broker and a real `ssh -R`
 * tunnel: a key revoked through the API fails on its very next request,
 * bearer (also on a kept-alive connection) or the browser session it logged
 * in, and the WebSockets it opened are closed; an expired key and its
 * sessions likewise; a proxy-only key opens device pages by bearer and login.
 */
import test from 'ava';
import { Agent, request as httpsRequest } from 'node:https';
import type { Duplex } from 'node:stream';
import type { CreateApiKeyResponse, RevokeApiKeyResponse } from '../../../api/index.js';
import { DOMAIN, withFleet, type Fleet } from '../../../testkit/operator-fixture.js';
import { ca, cookieOf, get, login } from './helpers.js';

/** A WebSocket handshake through the proxy (the device echoes): the upgraded socket. */
async function openWebSocket(f: Fleet, name: string, headers: Record<string, string>): Promise<Duplex> {
  const cert = await ca(f);
  return new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1', port: f.b.broker.apiPort, path: '/socket', servername: `${name}.${DOMAIN}`, ca: cert, agent: false,
      headers: { host: `${name}.${DOMAIN}`, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13', ...headers },
    });
    req.on('upgrade', (_res, socket) => resolve(socket));
    req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode} ${String(res.headers['x-certunnel-error'])}`)));
    req.on('error', reject);
    req.end();
  });
}

/** Resolves when SOCKET closes; rejects if it is still open after a generous deadline. */
function closed(socket: Duplex, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed) return resolve();
    const timer = setTimeout(() => reject(new Error(`${what} still open 15 s after the revocation`)), 15_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function newKey(f: Fleet, role: string, expiresAt?: string): Promise<CreateApiKeyResponse> {
  return f.b.call<CreateApiKeyResponse>(f.b.admin, 'POST', '/v1/apikeys', { role, name: `mallory-${role}`, expiresAt });
}

test('fail/revoked-key: the next request is refused, bearer on a kept-alive connection and the session it logged in', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true });
    const key = await newKey(f, 'operator');
    const auth = { authorization: `Bearer ${key.key}` };
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: await ca(f), servername: `kiosk-a.${DOMAIN}` });
    try {
      t.is((await get(f, 'kiosk-a', { headers: auth, agent })).status, 200);
      const cookie = cookieOf((await login(f, 'kiosk-a', key.key)).headers['set-cookie']);
      t.is((await get(f, 'kiosk-a', { headers: { cookie } })).status, 200);

      const revoked = await f.b.call<RevokeApiKeyResponse>(f.b.admin, 'POST', `/v1/apikeys/${key.id}/revoke`, {});
      t.is(revoked.key.status, 'revoked');

      const bearerNext = await get(f, 'kiosk-a', { headers: auth, agent });
      t.is(bearerNext.status, 401);
      t.is(bearerNext.headers['x-certunnel-error'], 'API_KEY_REVOKED');
      const sessionNext = await get(f, 'kiosk-a', { headers: { cookie } });
      t.is(sessionNext.status, 401);
      t.is(sessionNext.headers['x-certunnel-error'], 'UNAUTHENTICATED');
      const relogin = await login(f, 'kiosk-a', key.key);
      t.is(relogin.headers['set-cookie'], undefined, 'a revoked key cannot log in again');
    } finally {
      agent.destroy();
    }
  }));

test('fail/revoked-key: the WebSockets it opened (bearer and session) are closed; another key\'s stays open', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true });
    const key = await newKey(f, 'operator');
    const other = await newKey(f, 'proxy');
    const cookie = cookieOf((await login(f, 'kiosk-a', key.key)).headers['set-cookie']);
    const byBearer = await openWebSocket(f, 'kiosk-a', { authorization: `Bearer ${key.key}` });
    const bySession = await openWebSocket(f, 'kiosk-a', { cookie });
    const bystander = await openWebSocket(f, 'kiosk-a', { authorization: `Bearer ${other.key}` });
    await f.b.call(f.b.admin, 'POST', `/v1/apikeys/${key.id}/revoke`, {});
    await Promise.all([closed(byBearer, 'the bearer WebSocket'), closed(bySession, 'the session WebSocket')]);
    t.pass('both closed');
    // The other key's relay still echoes.
    const echoed = new Promise<string>((resolve) => bystander.once('data', (c: Buffer) => resolve(c.toString())));
    bystander.write('still here');
    t.is(await echoed, 'still here');
    bystander.destroy();
  }));

test('fail/expired-key: refused once the broker clock passes expiresAt, bearer and session, without a store change', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true });
    const key = await newKey(f, 'operator', new Date(f.b.clock.now().getTime() + 3600_000).toISOString());
    const auth = { authorization: `Bearer ${key.key}` };
    t.is((await get(f, 'kiosk-a', { headers: auth })).status, 200);
    const cookie = cookieOf((await login(f, 'kiosk-a', key.key)).headers['set-cookie']);
    t.is((await get(f, 'kiosk-a', { headers: { cookie } })).status, 200);

    f.b.clock.advance(3600_000 + 1000);
    const bearerNext = await get(f, 'kiosk-a', { headers: auth });
    t.is(bearerNext.status, 401);
    t.is(bearerNext.headers['x-certunnel-error'], 'API_KEY_EXPIRED');
    t.is((await get(f, 'kiosk-a', { headers: { cookie } })).headers['x-certunnel-error'], 'UNAUTHENTICATED');
  }));

test('ok/proxy-role key: opens device pages by bearer and by login, and the API refuses it', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    const key = await newKey(f, 'proxy');
    const res = await get(f, 'kiosk-a', { path: '/echo?via=bearer', headers: { authorization: `Bearer ${key.key}` } });
    t.is(res.status, 200, res.body);
    t.is(dev.http!.requests.at(-1)!.url, '/echo?via=bearer');
    const cookie = cookieOf((await login(f, 'kiosk-a', key.key)).headers['set-cookie']);
    t.is((await get(f, 'kiosk-a', { path: '/echo?via=session', headers: { cookie } })).status, 200);
    const err = await t.throwsAsync(f.b.call({ ...f.b.anonymous, apiKey: key.key }, 'GET', '/v1/devices'));
    t.is((err as { code?: string }).code, 'API_KEY_PROXY_ONLY');
  }));
