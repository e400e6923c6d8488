/**
 * API keys at the HTTP proxy, through a real broker and a real `ssh -R`
 * tunnel: a key revoked through the API fails on its very next request,
 * bearer (also on a kept-alive connection) or the browser session it logged
 * in; an expired key and its sessions likewise; a proxy-only key opens
 * device pages by bearer and login.
 */
import test from 'ava';
import { Agent } from 'node:https';
import type { CreateApiKeyResponse, RevokeApiKeyResponse } from '../../../api/index.js';
import { DOMAIN, withFleet, type Fleet } from '../../../testkit/operator-fixture.js';
import { ca, cookieOf, get, login } from './helpers.js';

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
