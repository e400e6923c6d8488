/**
 * The console's server side without a browser: its session cookie (forged,
 * tampered, expired, a revoked key), the CSRF token and origin rule on
 * unsafe requests, the sign-in form's refusals and its failure limit, the
 * pages' policy headers, and the API routes it added (labels: bad input
 * changes nothing; device list filters and sort orders with paging; audit
 * by target and time).
 */
import test from 'ava';
import { request } from 'node:https';
import type { DeviceView, ListAuditResponse, ListDevicesResponse } from '../../../api/index.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';
import { enrollTestDevice } from '../../../testkit/device-tunnel.js';
import { CONSOLE_COOKIE, signConsoleSession, verifyConsoleSession } from '../../../broker/http/console-session.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  code?: string;
}

function send(b: TestBroker, method: string, path: string, o: { headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, b.broker.apiUrl), { method, rejectUnauthorized: false, agent: false, headers: { ...o.headers, ...(o.body ? { 'content-length': Buffer.byteLength(o.body) } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        let code: string | undefined;
        try {
          code = (JSON.parse(body) as { error?: { code: string } }).error?.code;
        } catch {
          code = res.headers['x-certunnel-error'] as string | undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, code });
      });
    });
    req.on('error', reject);
    req.end(o.body ?? '');
  });
}

/** Signs in with KEY through the form; the session cookie (name=value) and its CSRF token. */
async function signIn(b: TestBroker, key: string): Promise<{ cookie: string; csrf: string }> {
  const origin = new URL(b.broker.apiUrl).origin;
  const res = await send(b, 'POST', '/console/sign-in', { headers: { origin, 'content-type': 'application/x-www-form-urlencoded' }, body: `apiKey=${encodeURIComponent(key)}` });
  if (res.status !== 303) throw new Error(`sign-in answered ${res.status}`);
  const setCookies = res.headers['set-cookie'] as string[];
  const cookie = setCookies.find((c) => c.startsWith(`${CONSOLE_COOKIE}=`))!.split(';')[0]!;
  const session = JSON.parse((await send(b, 'GET', '/v1/console/session', { headers: { cookie } })).body) as { csrfToken: string };
  return { cookie, csrf: session.csrfToken };
}

test('ok/pages: / and /console lead to sign-in; strict policy headers; the session cookie attributes', async (t) => {
  await withBroker(async (b) => {
    t.is((await send(b, 'GET', '/')).headers.location, '/console/');
    t.is((await send(b, 'GET', '/console/')).headers.location, '/console/sign-in');
    const page = await send(b, 'GET', '/console/sign-in');
    t.is(page.status, 200);
    const csp = String(page.headers['content-security-policy']);
    t.regex(csp, /script-src 'self'/);
    t.regex(csp, /frame-ancestors 'none'/);
    t.notRegex(csp, /unsafe-inline/);
    t.notRegex(page.body, /<script>|style=/, 'no inline script or style');
    t.notRegex(page.body, /single sign-on/, 'no SSO link without an oidc section');
    const js = await send(b, 'GET', '/console/assets/console.js', { headers: { 'accept-encoding': 'gzip' } });
    t.is(js.headers['content-encoding'], 'gzip');
    t.is((await send(b, 'GET', '/console/assets/nope.js')).code, 'NOT_FOUND');

    const origin = new URL(b.broker.apiUrl).origin;
    const res = await send(b, 'POST', '/console/sign-in', { headers: { origin, 'content-type': 'application/x-www-form-urlencoded' }, body: `apiKey=${encodeURIComponent(b.init.adminKey)}` });
    t.is(res.status, 303);
    t.is(res.headers.location, '/console/');
    const cookie = (res.headers['set-cookie'] as string[]).find((c) => c.startsWith(`${CONSOLE_COOKIE}=`))!;
    t.regex(cookie, /; Path=\/; Max-Age=28800; Secure; HttpOnly; SameSite=Strict$/);
    t.notRegex(cookie, /Domain=/i);
    t.false(cookie.includes(b.init.adminKey.slice(-20)), 'the cookie never carries the key');
  });
});

test('fail/sign-in: wrong key, proxy key, cross-site form, other content type; each refused and audited; failures are limited per source', async (t) => {
  await withBroker(async (b) => {
    const origin = new URL(b.broker.apiUrl).origin;
    const form = (key: string, headers: Record<string, string> = {}) =>
      send(b, 'POST', '/console/sign-in', { headers: { origin, 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: `apiKey=${encodeURIComponent(key)}` });
    const proxy = await b.call<{ key: string }>(b.admin, 'POST', '/v1/apikeys', { role: 'proxy', name: 'kiosk-viewer' });
    t.like(await form('ctk_wrong'), { status: 401, code: 'UNAUTHENTICATED' });
    t.like(await form(proxy.key), { status: 403 });
    t.like(await form(b.init.adminKey, { origin: 'https://evil.example' }), { status: 403 });
    t.like(await form(b.init.adminKey, { 'content-type': 'text/plain' }), { status: 415 });
    for (const r of [await form('x'), await form(proxy.key)]) t.is(r.headers['set-cookie'], undefined, 'no cookie on a refusal');
    const audit = await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=console.signin');
    // Repeated wrong keys from one source are aggregated into one row with a count (failure-audit.ts).
    t.deepEqual(new Set(audit.items.map((e) => e.outcome)), new Set(['UNAUTHENTICATED', 'API_KEY_PROXY_ONLY']));
    t.false(audit.items.some((e) => e.outcome === 'ok'));
  });
  await withBroker(
    async (b) => {
      const origin = new URL(b.broker.apiUrl).origin;
      const headers = { origin, 'content-type': 'application/x-www-form-urlencoded' };
      for (let i = 0; i < 3; i++) t.is((await send(b, 'POST', '/console/sign-in', { headers, body: 'apiKey=ctk_wrong' })).status, 401);
      const limited = await send(b, 'POST', '/console/sign-in', { headers, body: `apiKey=${encodeURIComponent(b.init.adminKey)}` });
      t.is(limited.code, 'RATE_LIMITED', 'even the right key waits once the source spent its failures');
    },
    { config: { api: { failureBurst: 3, failuresPerMinute: 0.1 } } },
  );
});

test('fail/session: forged, tampered, expired, revoked key, missing CSRF token, other origin; ok/csrf and same origin', async (t) => {
  await withBroker(async (b) => {
    const { cookie, csrf } = await signIn(b, b.init.adminKey);
    const origin = new URL(b.broker.apiUrl).origin;
    const post = (c: string, headers: Record<string, string>) =>
      send(b, 'POST', '/v1/apikeys', { headers: { cookie: c, 'content-type': 'application/json', ...headers }, body: JSON.stringify({ role: 'admin', name: 'made-by-console' }) });
    const keysBefore = (await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/apikeys')).items.length;

    t.like(await post(cookie, { origin }), { status: 403, code: 'CSRF_TOKEN_INVALID' });
    t.like(await post(cookie, { origin, 'x-csrf-token': `${csrf.slice(0, -2)}AA` }), { status: 403, code: 'CSRF_TOKEN_INVALID' });
    t.like(await post(cookie, { origin: 'https://evil.example', 'x-csrf-token': csrf }), { status: 403, code: 'CSRF_TOKEN_INVALID' });
    t.like(await post(cookie, { 'sec-fetch-site': 'cross-site', 'x-csrf-token': csrf }), { status: 403, code: 'CSRF_TOKEN_INVALID' });
    const [name, value] = cookie.split('=') as [string, string];
    const [v, body, mac] = value.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as Record<string, unknown>;
    const tampered = `${name}=${v}.${Buffer.from(JSON.stringify({ ...claims, r: 'admin', s: 'key_aaaaaaaaaaaaaaaa' })).toString('base64url')}.${mac}`;
    t.like(await post(tampered, { origin, 'x-csrf-token': csrf }), { status: 401, code: 'UNAUTHENTICATED' });
    const forged = `${name}=${signConsoleSession(Buffer.alloc(32, 7), { method: 'oidc', subject: 'mallory', name: 'Mallory', email: null, role: 'admin' }, new Date(Date.now() + 3600_000))}`;
    t.like(await send(b, 'GET', '/v1/devices', { headers: { cookie: forged } }), { status: 401, code: 'UNAUTHENTICATED' });
    t.is((await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/apikeys')).items.length, keysBefore, 'nothing was created');

    t.like(await post(cookie, { origin, 'x-csrf-token': csrf }), { status: 201 });
    t.is((await send(b, 'GET', '/v1/devices', { headers: { cookie } })).status, 200);

    // A revoked key ends its sessions at once; an expired session too.
    const operator = await b.call<{ id: string; key: string }>(b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'bob' });
    const bob = await signIn(b, operator.key);
    t.is((await send(b, 'GET', '/v1/devices', { headers: { cookie: bob.cookie } })).status, 200);
    await b.call(b.admin, 'POST', `/v1/apikeys/${operator.id}/revoke`, {});
    t.like(await send(b, 'GET', '/v1/devices', { headers: { cookie: bob.cookie } }), { status: 401, code: 'UNAUTHENTICATED' });
    b.clock.advance(8 * 3600_000 + 1000);
    t.like(await send(b, 'GET', '/v1/devices', { headers: { cookie } }), { status: 401, code: 'UNAUTHENTICATED' });
    t.is((await send(b, 'GET', '/console/', { headers: { cookie } })).headers.location, '/console/sign-in');
  });
});

test('ok/session cookie: verifies only what the key signed, unexpired', (t) => {
  const secret = Buffer.alloc(32, 1);
  const identity = { method: 'oidc', subject: 'sub-1', name: 'Alice', email: 'alice@example.com', role: 'operator' } as const;
  const value = signConsoleSession(secret, identity, new Date(2_000_000_000_000));
  t.like(verifyConsoleSession(secret, value, new Date(1_900_000_000_000)), identity);
  t.is(verifyConsoleSession(secret, value, new Date(2_000_000_000_000)), undefined, 'expired');
  t.is(verifyConsoleSession(Buffer.alloc(32, 2), value, new Date(1_900_000_000_000)), undefined, 'another key');
  t.is(verifyConsoleSession(secret, `${value}x`, new Date(1_900_000_000_000)), undefined, 'tampered mac');
  t.is(verifyConsoleSession(secret, 'c1.e30.', new Date(0)), undefined);
  const proxyRole = signConsoleSession(secret, { ...identity, role: 'proxy' as never }, new Date(2_000_000_000_000));
  t.is(verifyConsoleSession(secret, proxyRole, new Date(0)), undefined, 'no console session for role proxy');
});

test('fail/labels: bad keys, values and counts are BAD_REQUEST and change nothing; ok/labels replaced and audited', async (t) => {
  await withBroker(async (b) => {
    await enrollTestDevice(b, 'label-me');
    const before = (await b.call<DeviceView>(b.admin, 'GET', '/v1/devices/label-me')).labels;
    const tooMany = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    for (const labels of [{ 'bad key': 'v' }, { '': 'v' }, { k: 'a\nb' }, { k: 'x'.repeat(201) }, tooMany, { k: 1 }]) {
      const err = await t.throwsAsync(b.call(b.admin, 'PUT', '/v1/devices/label-me/labels', { labels }));
      t.is((err as { code?: string }).code, 'BAD_REQUEST', JSON.stringify(labels).slice(0, 40));
    }
    t.is(((await t.throwsAsync(b.call(b.admin, 'PUT', '/v1/devices/label-me/labels', { labels: {}, extra: 1 }))) as { code?: string }).code, 'BAD_REQUEST');
    t.is(((await t.throwsAsync(b.call(b.admin, 'PUT', '/v1/devices/nobody/labels', { labels: {} }))) as { code?: string }).code, 'DEVICE_UNKNOWN');
    const provisioner = await b.apiKey('provisioner');
    t.is(((await t.throwsAsync(b.call(provisioner, 'PUT', '/v1/devices/label-me/labels', { labels: {} }))) as { code?: string }).code, 'FORBIDDEN');
    t.deepEqual((await b.call<DeviceView>(b.admin, 'GET', '/v1/devices/label-me')).labels, before, 'unchanged');

    const set = await b.call<DeviceView>(b.admin, 'PUT', '/v1/devices/label-me/labels', { labels: { site: 'paris', 'k8s.io/zone': 'b' } });
    t.deepEqual(set.labels, { site: 'paris', 'k8s.io/zone': 'b' });
    const audit = await b.call<ListAuditResponse>(b.admin, 'GET', `/v1/audit?action=device.labels&target=${set.id}`);
    t.is(audit.items.length, 1);
    t.deepEqual(audit.items[0]!.details, { name: 'label-me', before, after: { site: 'paris', 'k8s.io/zone': 'b' } });
  });
});

test('ok/device list: online filter, sort orders, keyset paging without gaps or repeats; audit by target and until', async (t) => {
  await withBroker(async (b) => {
    const names = ['delta', 'alpha', 'charlie', 'echo', 'bravo'];
    const ids: string[] = [];
    for (const name of names) ids.push((await enrollTestDevice(b, name)).id);
    const all = async (query: string): Promise<string[]> => {
      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const page: ListDevicesResponse = await b.call(b.admin, 'GET', `/v1/devices?limit=2${query}${cursor ? `&cursor=${cursor}` : ''}`);
        seen.push(...page.items.map((d) => d.name!));
        cursor = page.nextCursor;
      } while (cursor);
      return seen;
    };
    const onePage = async (query: string): Promise<string[]> => (await b.call<ListDevicesResponse>(b.admin, 'GET', `/v1/devices?limit=100${query}`)).items.map((d) => d.name!);
    t.deepEqual(await all(''), await onePage(''));
    t.deepEqual([...(await all(''))].sort(), [...names].sort());
    t.deepEqual(await all('&sort=name'), [...names].sort());
    // Never seen: all equal (0), so the id decides, descending like the time.
    const byIdDesc = names.map((n, i) => [ids[i]!, n] as const).sort((x, y) => (x[0] < y[0] ? 1 : -1)).map(([, n]) => n);
    t.deepEqual(await all('&sort=lastSeen'), byIdDesc);
    t.deepEqual(await all('&online=true'), []);
    t.deepEqual(await all('&online=false&sort=name&name=a'), ['alpha', 'bravo', 'charlie', 'delta']);
    t.is(((await t.throwsAsync(b.call(b.admin, 'GET', '/v1/devices?sort=random'))) as { code?: string }).code, 'BAD_REQUEST');
    t.is(((await t.throwsAsync(b.call(b.admin, 'GET', '/v1/devices?sort=name&cursor=bm9wZQ'))) as { code?: string }).code, 'BAD_REQUEST');

    const enrolled = await b.call<ListAuditResponse>(b.admin, 'GET', `/v1/audit?target=${ids[2]}`);
    t.deepEqual(enrolled.items.map((e) => e.action), ['device.enroll']);
    const first = (await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=device.enroll')).items[0]!;
    const until = new Date(new Date(first.at).getTime() + 1).toISOString();
    t.true((await b.call<ListAuditResponse>(b.admin, 'GET', `/v1/audit?action=device.enroll&until=${until}`)).items.every((e) => e.at <= first.at));
  });
});
