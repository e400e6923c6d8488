/**
 * Key guessing on device hostnames is slowed per client address, through a
 * real broker and a real tunnel.
 */
import test from 'ava';
import { withFleet } from '../../../testkit/operator-fixture.js';
import { bearer, get, login } from './helpers.js';

test('fail/guessing keys: RATE_LIMITED (429, Retry-After) after the burst of failures per address; known keys keep working; refills', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true });
    const known = await bearer(f);
    const fresh = await bearer(f);
    t.is((await get(f, 'kiosk-a', { headers: known })).status, 200, 'a good key, now known');
    const wrong = { authorization: 'Bearer ctk_notakey0000000000000000000000000000000000' };
    for (let i = 0; i < 3; i++) {
      const res = await get(f, 'kiosk-a', { headers: wrong });
      t.is(res.status, 401);
      t.is(res.headers['x-certunnel-error'], 'UNAUTHENTICATED');
    }
    const limited = await get(f, 'kiosk-a', { headers: wrong });
    t.is(limited.status, 429);
    t.is(limited.headers['x-certunnel-error'], 'RATE_LIMITED');
    const wait = Number(limited.headers['retry-after']);
    t.true(wait >= 1 && wait <= 2, `retry-after ${wait}`);
    t.regex(limited.body, /Too many failed attempts[\s\S]*Try again in \d+ seconds/);
    // An unknown key is not even checked now: a good one never seen before is refused alike.
    t.is((await get(f, 'kiosk-a', { headers: fresh })).status, 429);
    const form = await login(f, 'kiosk-a', fresh.authorization!.slice('Bearer '.length));
    t.is(form.status, 429);
    t.is(form.headers['x-certunnel-error'], 'RATE_LIMITED');
    t.regex(form.body, /Try again in \d+ seconds/);
    t.is(form.headers['set-cookie'], undefined);
    // A key already known good is not a guess.
    t.is((await get(f, 'kiosk-a', { headers: known })).status, 200);
    // Only checked keys were audited as failures.
    const failures = (await f.b.call<{ items: unknown[] }>(f.b.admin, 'GET', '/v1/audit?action=auth.failure')).items;
    t.is(failures.length, 3);
    const metrics = (await f.b.call<Buffer>(f.b.anonymous, 'GET', '/metrics')).toString();
    t.regex(metrics, /certunnel_proxy_requests_total\{outcome="RATE_LIMITED"\} 2/);
    t.regex(metrics, /certunnel_proxy_requests_total\{outcome="UNAUTHENTICATED"\} 3/);
    t.regex(metrics, /certunnel_proxy_requests_total\{outcome="relayed"\} 2/);
    t.regex(metrics, /certunnel_proxy_logins_total\{outcome="RATE_LIMITED"\} 1/);
    t.regex(metrics, /certunnel_proxy_upstream_response_seconds_count 2/);
    // One failure's worth refills every second here (60 a minute).
    await new Promise((resolve) => setTimeout(resolve, wait * 1000 + 100));
    t.is((await get(f, 'kiosk-a', { headers: fresh })).status, 200, 'checked again once the bucket refilled');
  }, { config: { proxy: { authFailureBurst: 3, authFailuresPerMinute: 60 } } }));

