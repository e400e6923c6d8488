/**
 * Operators sign in on the broker's own origin only: a device hostname
 * never shows a credential form (a compromised device could imitate it or
 * read it); it gets its session from a one-time code handed over by
 * redirect. Through a real broker (HTTPS) and real tunnels.
 */
import test from 'ava';
import { DOMAIN, withFleet } from '../../../testkit/operator-fixture.js';
import { brokerLogin, brokerRequest, cookieOf, get, redeem } from './helpers.js';

test('fail/no credential form on a device origin: the login and unauthenticated pages send the browser to the broker', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true });
    const operatorKey = (await f.b.apiKey('operator')).apiKey!;
    const port = new URL(f.b.broker.apiUrl).port;
    const brokerLoginUrl = `https://${DOMAIN}:${port}/.certunnel/login`;

    const form = await get(f, 'kiosk-a', { path: '/.certunnel/login?next=/admin' });
    t.is(form.status, 303);
    t.is(form.headers.location, `${brokerLoginUrl}?device=kiosk-a&next=%2Fadmin`);
    t.notRegex(form.body, /type="password"/);
    const posted = await get(f, 'kiosk-a', { method: 'POST', path: '/.certunnel/login', body: `apiKey=${operatorKey}`, headers: { 'content-type': 'application/x-www-form-urlencoded', origin: `https://kiosk-a.${DOMAIN}:${port}` } });
    t.is(posted.status, 405);
    t.is(posted.headers['set-cookie'], undefined);

    const browser = await get(f, 'kiosk-a', { path: '/admin?tab=1', headers: { accept: 'text/html,application/xhtml+xml' } });
    t.is(browser.status, 303);
    t.is(browser.headers.location, `${brokerLoginUrl}?device=kiosk-a&next=%2Fadmin%3Ftab%3D1`);
    const tool = await get(f, 'kiosk-a', { path: '/admin' });
    t.is(tool.status, 401);
    t.is(tool.headers['x-certunnel-error'], 'UNAUTHENTICATED');
    t.is(tool.headers['www-authenticate'], 'Bearer realm="certunnel"');
    t.notRegex(tool.body, /<form|type="password"/);
    t.true(tool.body.includes('href="/.certunnel/login?next=%2Fadmin"'), tool.body);
  }));

test('ok/sign in on the broker origin, one-time code to the device hostname, host-only cookie; a second device needs no key', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    await f.enroll('kiosk-b', { connect: true });
    const operatorKey = (await f.b.apiKey('operator')).apiKey!;
    const port = new URL(f.b.broker.apiUrl).port;

    const page = await brokerRequest(f, { path: '/.certunnel/login?device=kiosk-a&next=%2Fecho%3Fx%3D1' });
    t.is(page.status, 200);
    t.regex(page.body, /<form method="post" action="\/\.certunnel\/login">/);
    t.regex(page.body, /name="device" value="kiosk-a"/);
    t.regex(String(page.headers['content-security-policy']), /default-src 'none';.*form-action 'self' https:\/\/\*\.fleet\.test:\*;.*frame-ancestors 'none'/);
    t.is(page.headers['x-frame-options'], 'DENY');
    t.is(page.headers['cross-origin-opener-policy'], 'same-origin');
    t.is(page.headers['referrer-policy'], 'no-referrer');
    t.is(page.headers['cache-control'], 'no-store');

    const wrong = await brokerLogin(f, 'kiosk-a', 'ctk_key_aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb');
    t.is(wrong.status, 401);
    t.regex(wrong.body, /That API key was not accepted/);
    t.is(wrong.headers['set-cookie'], undefined);
    const provisioner = await brokerLogin(f, 'kiosk-a', (await f.b.apiKey('provisioner')).apiKey!);
    t.is(provisioner.status, 403);
    t.is(provisioner.headers['x-certunnel-error'], 'FORBIDDEN');
    const crossSite = await brokerLogin(f, 'kiosk-a', operatorKey, '/', { origin: `https://kiosk-a.${DOMAIN}:${port}` });
    t.is(crossSite.status, 403, 'a device page cannot post the form (login CSRF)');
    t.is(crossSite.headers['set-cookie'], undefined);

    const ok = await brokerLogin(f, 'kiosk-a', operatorKey, '/echo?x=1');
    t.is(ok.status, 303);
    const to = new URL(ok.headers.location!);
    t.is(`${to.origin}${to.pathname}`, `https://kiosk-a.${DOMAIN}:${port}/.certunnel/callback`);
    t.regex(to.searchParams.get('code')!, /^[A-Za-z0-9_-]{43}$/);
    t.is(to.searchParams.get('next'), '/echo?x=1');
    const brokerCookie = ok.headers['set-cookie']![0]!;
    t.regex(brokerCookie, /^__Host-certunnel=v1\.key_[a-z2-7]{16}\.\d+\.[A-Za-z0-9_-]+; Path=\/; Max-Age=28800; Secure; HttpOnly; SameSite=Lax$/);
    t.false(brokerCookie.includes(operatorKey.split('.')[1]!), 'the cookie does not carry the key');

    // The code is for kiosk-a's hostname only, and for one use.
    const elsewhere = await redeem(f, 'kiosk-b', ok.headers.location!);
    t.is(elsewhere.status, 400);
    t.is(elsewhere.headers['x-certunnel-error'], 'LOGIN_CODE_INVALID');
    t.is(elsewhere.headers['set-cookie'], undefined);
    t.is((await redeem(f, 'kiosk-a', ok.headers.location!)).headers['x-certunnel-error'], 'LOGIN_CODE_INVALID', 'spent by its first presentation');

    // Signed in on the broker: the next code comes without typing the key again.
    const again = await brokerRequest(f, { path: '/.certunnel/login?device=kiosk-a&next=%2Fecho%3Fx%3D1', headers: { cookie: cookieOf(ok.headers['set-cookie']) } });
    t.is(again.status, 303);
    const session = await redeem(f, 'kiosk-a', again.headers.location!);
    t.is(session.status, 303);
    t.is(session.headers.location, '/echo?x=1');
    t.is(session.headers['referrer-policy'], 'no-referrer');
    const setCookie = session.headers['set-cookie']![0]!;
    t.regex(setCookie, /^__Host-certunnel=v1\.key_[a-z2-7]{16}\.\d+\.[A-Za-z0-9_-]+; Path=\/; Max-Age=28800; Secure; HttpOnly; SameSite=Strict$/, 'host-only: no Domain');
    t.is((await redeem(f, 'kiosk-a', again.headers.location!)).status, 400, 'used twice');
    const cookie = cookieOf(session.headers['set-cookie']);
    t.is((await get(f, 'kiosk-a', { headers: { cookie: `a=1; ${cookie}` } })).status, 200);
    t.is(dev.http!.requests.at(-1)!.headers.cookie, 'a=1', 'the session cookie stays at the broker');
    t.is((await get(f, 'kiosk-b', { headers: { cookie } })).status, 401, 'bound to its hostname');
    t.is((await brokerRequest(f, { path: '/healthz', headers: { cookie: cookieOf(ok.headers['set-cookie']) } })).status, 200, 'the API is still the API');

    // Expired: a code lives a minute at most.
    const late = await brokerRequest(f, { path: '/.certunnel/login?device=kiosk-a', headers: { cookie: cookieOf(ok.headers['set-cookie']) } });
    f.b.clock.advance(61_000);
    t.is((await redeem(f, 'kiosk-a', late.headers.location!)).headers['x-certunnel-error'], 'LOGIN_CODE_INVALID');

    const logins = (await f.b.call<{ items: Array<{ outcome: string }> }>(f.b.admin, 'GET', '/v1/audit?action=proxy.login')).items.map((e) => e.outcome);
    t.deepEqual(logins.sort(), ['FORBIDDEN', 'UNAUTHENTICATED', 'ok']);
  }));

test('fail/bad login input: device names, Origin garbage, the form elsewhere than the broker', (t) =>
  withFleet(async (f) => {
    const operatorKey = (await f.b.apiKey('operator')).apiKey!;
    for (const device of ['kiosk-a.evil.example', '../x', '', 'KIOSK']) {
      const res = await brokerRequest(f, { path: `/.certunnel/login?device=${encodeURIComponent(device)}` });
      t.is(res.status, 400, device);
      t.is(res.headers['x-certunnel-error'], 'BAD_REQUEST', device);
    }
    const posted = await brokerLogin(f, 'kiosk-a.evil.example', operatorKey);
    t.is(posted.status, 400);
    t.is(posted.headers['set-cookie'], undefined);
    const garbage = await brokerLogin(f, 'kiosk-a', operatorKey, '/', { origin: 'http://[' });
    t.is(garbage.status, 400);
    t.is(garbage.headers['x-certunnel-error'], 'BAD_REQUEST');
    t.is(garbage.headers['set-cookie'], undefined);
    t.is((await brokerRequest(f, { path: '/.certunnel/nothing' })).status, 404);
  }));
