/**
 * Console single sign-on against a real OpenID Connect provider
 * (node-oidc-provider, testkit/oidc-provider.ts) on 127.0.0.1, driven over
 * real HTTP as a browser would (testkit/test-browser.ts: a cookie jar,
 * redirects, the provider's login and consent forms). The broker side is
 * broker/oidc mounted in a koa app as the API mounts it, with a real
 * SQLite store for the audit trail; onSignedIn is a small recorder that
 * answers a marker page in place of the console's session. Serial: each
 * test starts a provider (an RSA key, a koa app) and a store, and the
 * shared 2-core machine is loaded enough without fourteen at once.
 */
import test, { type ExecutionContext } from 'ava';
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:http';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import Koa from 'koa';
import { parseConfig } from '../../../broker/core/config.js';
import { createOidcSignIn, OIDC_CALLBACK_PATH, type OidcIdentity, type OidcSignIn } from '../../../broker/oidc/index.js';
import { FLOW_COOKIE } from '../../../broker/oidc/flow-state.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import type { AuditEvent, Store } from '../../../broker/store/index.js';
import { startTestIdp, type TestIdp, type TestIdpOptions } from '../../../testkit/oidc-provider.js';
import { readForms, TestBrowser, type Visit } from '../../../testkit/test-browser.js';
import { freePort } from '../../../testkit/net.js';
import { withStore } from '../store/fixtures.js';

const CLIENT_ID = 'certunnel-console';
const ROLES = { 'certunnel-admins': 'admin', 'certunnel-ops': 'operator', factory: 'provisioner' } as const;
const ACCOUNTS = [
  { login: 'alice', email: 'alice@example.com', name: 'Alice Admin', groups: ['staff', 'certunnel-admins', 'certunnel-ops'] },
  { login: 'oscar', email: 'oscar@example.com', name: 'Oscar Ops', groups: 'certunnel-ops' },
  { login: 'mallory', email: 'mallory@example.com', name: 'Mallory', groups: ['staff', 'visitors'] },
  { login: 'nobody', email: 'nobody@example.com' },
];

interface Harness {
  readonly idp: TestIdp;
  readonly base: string;
  readonly sso: OidcSignIn<Koa.Context>;
  readonly signedIn: OidcIdentity[];
  readonly store: Store;
  readonly logs: string[];
  readonly secret: string;
  /** Moves the broker's clock (the provider keeps the real one). */
  shift(ms: number): void;
  audit(): Promise<AuditEvent[]>;
}

interface HarnessOptions {
  readonly idp?: Partial<TestIdpOptions>;
  readonly oidc?: Record<string, unknown>;
  /** The secret the broker presents (default: the one the provider has). */
  readonly brokerSecret?: string;
  /** How the broker authenticates at the token endpoint (default client_secret_basic); none: a public client. */
  readonly auth?: 'client_secret_basic' | 'client_secret_post' | 'none';
}

async function withSso(t: ExecutionContext, options: HarnessOptions, fn: (h: Harness) => Promise<void>): Promise<void> {
  await withStore(async (store) => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const secret = `s3cr3t-${randomBytes(18).toString('base64url')}`;
    const idp = await startTestIdp({
      accounts: ACCOUNTS,
      clients: [{
        clientId: CLIENT_ID, clientSecret: options.auth === 'none' ? undefined : secret, tokenEndpointAuthMethod: options.auth,
        redirectUris: [`${base}${OIDC_CALLBACK_PATH}`], postLogoutRedirectUris: [`${base}/console/`],
      }],
      claimsIn: 'id_token',
      ...options.idp,
    });
    const logs: string[] = [];
    const logger = createLogger('debug', new Writable({ write(chunk: Buffer, _enc, cb) { logs.push(chunk.toString()); cb(); } }) as never);
    let offset = 0;
    const config = parseConfig({ api: { publicUrl: base }, oidc: { issuer: idp.issuer, clientId: CLIENT_ID, roles: ROLES, allowInsecureIssuer: true, scopes: ['openid', 'email', 'profile', 'groups'], tokenEndpointAuthMethod: options.auth, ...options.oidc } }, '/data');
    const signedIn: OidcIdentity[] = [];
    const sso = createOidcSignIn<Koa.Context>({
      // As the broker passes it when api.publicUrl is unset: asked on first use.
      config: config.oidc!, publicUrl: () => base, clientSecret: options.auth === 'none' ? undefined : (options.brokerSecret ?? secret), sessionSecret: randomBytes(32),
      audit: store, failureAudit: store, clock: () => new Date(Date.now() + offset), logger,
      remoteAddress: (ctx) => ctx.ip,
      onSignedIn(identity, ctx, after) {
        signedIn.push(identity);
        ctx.append('set-cookie', 'test-console=opened; Path=/; HttpOnly');
        ctx.set('x-test-next', after.next);
        ctx.status = 200;
        ctx.body = `signed in: ${identity.subject} as ${identity.role}`;
      },
    });
    const app = new Koa();
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch (err) {
        ctx.status = (err as { status?: number }).status ?? 500;
        ctx.body = { error: { code: (err as { code?: string }).code ?? 'INTERNAL' } };
      }
    });
    app.use((ctx, next) => sso.middleware(ctx, next));
    app.use((ctx) => {
      if (ctx.path.startsWith('/console')) ctx.body = 'console page';
    });
    const server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    t.is((server.address() as AddressInfo).port, port);
    try {
      await fn({
        idp, base, sso, signedIn, store, logs, secret,
        shift: (ms) => {
          offset += ms;
        },
        audit: async () => (await store.listAudit({ action: 'oidc.signin', limit: 100 })).items,
      });
      t.false(logs.some((l) => l.includes(secret)), 'the client secret is never logged');
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await idp.close();
    }
  });
}

const atCallback = (u: URL): boolean => u.pathname === OIDC_CALLBACK_PATH;

/** GET the login, type LOGIN at the provider, consent; stop before the broker's callback when STOP. */
async function signIn(browser: TestBrowser, base: string, login: string, stop = false): Promise<Visit> {
  const stopBefore = stop ? atCallback : undefined;
  let visit = await browser.visit(`${base}/console/oidc/login?next=/console/devices?status=online`, { stopBefore });
  for (let step = 0; step < 3 && visit.status === 200 && visit.url.origin !== base; step++) {
    const form = readForms(visit.body, visit.url).find((f) => f.fields.prompt === 'login' || f.fields.prompt === 'consent');
    if (!form) throw new Error(`no provider form at ${visit.url.href}: ${visit.body.slice(0, 300)}`);
    visit = await browser.submit(form, form.fields.prompt === 'login' ? { login, password: 'any' } : {}, stopBefore);
  }
  return visit;
}

for (const claimsIn of ['id_token', 'userinfo'] as const) {
  test.serial(`ok/groups in the ${claimsIn} map to roles: alice (admin and ops) is admin, oscar (a single string) is operator`, async (t) => {
    await withSso(t, { idp: { claimsIn } }, async (h) => {
      for (const [login, role, email] of [['alice', 'admin', 'alice@example.com'], ['oscar', 'operator', 'oscar@example.com']] as const) {
        const browser = new TestBrowser();
        const done = await signIn(browser, h.base, login);
        t.is(done.status, 200, done.body);
        t.is(done.body, `signed in: ${login} as ${role}`);
        t.is(done.url.pathname, OIDC_CALLBACK_PATH);
        t.is(done.headers.get('x-test-next'), '/console/devices?status=online', 'next survives the round trip');
        t.like(h.signedIn.at(-1), { subject: login, role, email, issuer: h.idp.issuer });
        t.true(h.signedIn.at(-1)!.expiresAt.getTime() > Date.now() + 7.9 * 3600_000, 'session lifetime: oidc.sessionMinutes (8 h)');
        t.is(browser.jar.get('127.0.0.1', FLOW_COOKIE), undefined, 'the flow cookie is cleared');
        t.is(browser.jar.get('127.0.0.1', 'test-console')?.value, 'opened', 'the console\'s own cookie is kept beside the clearing');
      }
      t.is(h.signedIn.length, 2);
      t.like(h.signedIn[0], { name: 'Alice Admin' });
      const userinfoCalls = h.idp.requests.filter((r) => r === `GET ${h.idp.userinfoPath}`).length;
      t.is(userinfoCalls, claimsIn === 'userinfo' ? 2 : 0, 'userinfo is asked only when the ID token lacks the groups claim');
      const rows = await h.audit();
      t.deepEqual(rows.map((r) => [r.actor, r.outcome, r.details.role, r.details.email]), [
        ['oidc:alice', 'ok', 'admin', 'alice@example.com'],
        ['oidc:oscar', 'ok', 'operator', 'oscar@example.com'],
      ]);
    });
  });
}

for (const auth of ['client_secret_post', 'none'] as const) {
  test.serial(`ok/token endpoint authentication ${auth}${auth === 'none' ? ' (a public client: PKCE only)' : ''}`, async (t) => {
    await withSso(t, { auth }, async (h) => {
      const done = await signIn(new TestBrowser(), h.base, 'oscar');
      t.is(done.body, 'signed in: oscar as operator');
    });
  });
}

test.serial('ok/the login redirect: code flow with PKCE S256, state, nonce; the flow cookie is __Host-, HttpOnly, Secure, SameSite=Lax', async (t) => {
  await withSso(t, {}, async (h) => {
    const browser = new TestBrowser();
    const res = await browser.request(`${h.base}/console/oidc/login`);
    t.is(res.status, 302);
    t.is(res.headers.get('cache-control'), 'no-store');
    const to = new URL(res.headers.get('location')!);
    t.is(to.origin, h.idp.issuer);
    t.like(Object.fromEntries(to.searchParams), { response_type: 'code', client_id: CLIENT_ID, code_challenge_method: 'S256', redirect_uri: `${h.base}${OIDC_CALLBACK_PATH}`, scope: 'openid email profile groups' });
    for (const p of ['state', 'nonce', 'code_challenge']) t.regex(to.searchParams.get(p) ?? '', /^[A-Za-z0-9_-]{43,}$/, p);
    const [line] = res.headers.getSetCookie().filter((l) => l.startsWith(`${FLOW_COOKIE}=`));
    t.truthy(line);
    t.regex(line!, /; Path=\/;/);
    t.regex(line!, /; Max-Age=600;/);
    t.regex(line!, /; Secure; HttpOnly; SameSite=Lax$/);
    t.false(/Domain=/i.test(line!));
    const value = line!.slice(FLOW_COOKIE.length + 1).split(';')[0]!;
    t.false(value.includes(to.searchParams.get('state')!), 'the state is sealed, not readable in the cookie');
  });
});

test.serial('fail/OIDC_NO_ROLE: a user whose groups map to no role gets the refusal page, no session, an audit row', async (t) => {
  await withSso(t, {}, async (h) => {
    for (const login of ['mallory', 'nobody']) {
      const browser = new TestBrowser();
      const done = await signIn(browser, h.base, login);
      t.is(done.status, 403);
      t.is(done.headers.get('x-certunnel-error'), 'OIDC_NO_ROLE');
      t.regex(done.body, /No access to this broker/);
      t.regex(done.body, /OIDC_NO_ROLE/);
      t.is(done.headers.get('content-security-policy')?.includes("frame-ancestors 'none'"), true);
      t.is(browser.jar.get('127.0.0.1', FLOW_COOKIE), undefined);
      t.is(browser.jar.get('127.0.0.1', 'test-console'), undefined);
    }
    t.is(h.signedIn.length, 0);
    const rows = await h.audit();
    t.deepEqual(rows.map((r) => [r.actor, r.outcome, r.details.values]), [['oidc:mallory', 'OIDC_NO_ROLE', ['staff', 'visitors']], ['oidc:nobody', 'OIDC_NO_ROLE', []]]);
  });
});

test.serial('fail/OIDC_PROVIDER_REFUSED: the user cancels at the provider (error=access_denied)', async (t) => {
  await withSso(t, {}, async (h) => {
    const browser = new TestBrowser();
    const atIdp = await browser.visit(`${h.base}/console/oidc/login`);
    const cancel = /<a href="([^"]+)">\[ Cancel \]<\/a>/.exec(atIdp.body)?.[1];
    t.truthy(cancel, 'the provider\'s login page offers to cancel');
    const done = await browser.visit(new URL(cancel!.replace(/&amp;/g, '&'), atIdp.url));
    t.is(done.url.pathname, OIDC_CALLBACK_PATH);
    t.is(done.url.searchParams.get('error'), 'access_denied', 'the provider really answered with an error');
    t.is(done.status, 403);
    t.is(done.headers.get('x-certunnel-error'), 'OIDC_PROVIDER_REFUSED');
    t.regex(done.body, /<code>access_denied<\/code>/);
    t.is(h.signedIn.length, 0);
    t.deepEqual((await h.audit()).map((r) => [r.outcome, r.details.providerError]), [['OIDC_PROVIDER_REFUSED', 'access_denied']]);
  });
});

test.serial('fail/OIDC_STATE_INVALID: a tampered state, a tampered cookie, another browser, a replayed callback', async (t) => {
  await withSso(t, {}, async (h) => {
    const browser = new TestBrowser();
    const stopped = await signIn(browser, h.base, 'alice', true);
    t.is(stopped.status, 0, 'stopped before the callback');
    const callback = stopped.url;
    t.truthy(callback.searchParams.get('code'));
    const cookie = browser.jar.get('127.0.0.1', FLOW_COOKIE)!.value;
    const expectRefused = async (b: TestBrowser, url: URL, why: string): Promise<void> => {
      const res = await b.visit(url);
      t.is(res.status, 400, why);
      t.is(res.headers.get('x-certunnel-error'), 'OIDC_STATE_INVALID', why);
      t.regex(res.body, /does not belong to a sign-in this browser started/, why);
    };

    const otherState = new URL(callback);
    const state = callback.searchParams.get('state')!;
    otherState.searchParams.set('state', `${state.slice(0, -1)}${state.endsWith('A') ? 'B' : 'A'}`);
    t.not(otherState.searchParams.get('state'), state);
    await expectRefused(browser, otherState, 'tampered state');
    t.is(browser.jar.get('127.0.0.1', FLOW_COOKIE), undefined, 'a refusal clears the flow cookie');

    browser.jar.set('127.0.0.1', FLOW_COOKIE, `${cookie.slice(0, 20)}${cookie[20] === 'A' ? 'B' : 'A'}${cookie.slice(21)}`);
    await expectRefused(browser, callback, 'tampered cookie');

    await expectRefused(new TestBrowser(), callback, 'another browser (login CSRF: the code sent to a victim)');
    t.is(h.signedIn.length, 0, 'nothing was signed in so far');

    // The genuine browser, with its genuine cookie, completes once…
    browser.jar.set('127.0.0.1', FLOW_COOKIE, cookie);
    const done = await browser.visit(callback);
    t.is(done.status, 200, done.body);
    t.is(h.signedIn.length, 1);
    // …and the same callback again, with the cookie it had (a copy kept by an attacker), is refused before the provider is asked.
    await expectRefused(browser, callback, 'replayed after the cookie was cleared');
    browser.jar.set('127.0.0.1', FLOW_COOKIE, cookie);
    await expectRefused(browser, callback, 'replayed with the original cookie');
    t.is(h.signedIn.length, 1, 'one sign-in only');
    const rows = await h.audit();
    t.deepEqual(rows.map((r) => r.outcome), ['OIDC_STATE_INVALID', 'OIDC_STATE_INVALID', 'OIDC_STATE_INVALID', 'ok', 'OIDC_STATE_INVALID', 'OIDC_STATE_INVALID']);
    t.is(rows.at(-1)!.details.reason, 'callback replayed');
  });
});

test.serial('fail/OIDC_STATE_EXPIRED: a callback after oidc.loginTimeoutSeconds', async (t) => {
  await withSso(t, { oidc: { loginTimeoutSeconds: 60 } }, async (h) => {
    const browser = new TestBrowser();
    const stopped = await signIn(browser, h.base, 'alice', true);
    h.shift(61_000);
    const res = await browser.visit(stopped.url);
    t.is(res.status, 400);
    t.is(res.headers.get('x-certunnel-error'), 'OIDC_STATE_EXPIRED');
    t.regex(res.body, /took too long/);
    t.is(h.signedIn.length, 0);
    // Coming back in time does not revive it: the cookie was cleared with the refusal.
    h.shift(-61_000);
    t.is((await browser.visit(stopped.url)).headers.get('x-certunnel-error'), 'OIDC_STATE_INVALID');
    t.is(h.signedIn.length, 0);
  });
});

test.serial('fail/OIDC_TOKEN_INVALID: the provider refuses the broker\'s client secret; the secret is in no page or log', async (t) => {
  await withSso(t, { brokerSecret: 'not-the-secret-4f1d' }, async (h) => {
    const browser = new TestBrowser();
    const done = await signIn(browser, h.base, 'alice');
    t.is(done.status, 401);
    t.is(done.headers.get('x-certunnel-error'), 'OIDC_TOKEN_INVALID');
    t.false(done.body.includes('not-the-secret-4f1d'));
    t.false(h.logs.some((l) => l.includes('not-the-secret-4f1d')), 'the broker\'s secret is never logged');
    t.true(h.logs.some((l) => l.includes('invalid_client')), 'the log says why');
    t.is(h.signedIn.length, 0);
  });
});

test.serial('fail/OIDC_PROVIDER_UNAVAILABLE: the provider cannot be reached when a sign-in starts', async (t) => {
  await withSso(t, {}, async (h) => {
    await h.idp.close();
    const res = await new TestBrowser().visit(`${h.base}/console/oidc/login`);
    t.is(res.status, 502);
    t.is(res.headers.get('x-certunnel-error'), 'OIDC_PROVIDER_UNAVAILABLE');
    t.is(res.headers.getSetCookie().filter((l) => l.startsWith(`${FLOW_COOKIE}=v1`)).length, 0, 'no flow started');
    await t.throwsAsync(h.sso.ready(), { code: 'OIDC_PROVIDER_UNAVAILABLE' } as never);
    t.is(await h.sso.logoutUrl(), undefined, 'logout does not wait on a provider that is down');
  });
});

test.serial('ok/logout: the provider\'s end_session_endpoint ends its session and comes back to the console', async (t) => {
  await withSso(t, {}, async (h) => {
    const browser = new TestBrowser();
    t.is((await signIn(browser, h.base, 'alice')).status, 200);
    const url = await h.sso.logoutUrl();
    t.truthy(url);
    t.is(`${url!.origin}${url!.pathname}`, `${h.idp.issuer}/session/end`);
    t.is(url!.searchParams.get('client_id'), CLIENT_ID);
    t.is(url!.searchParams.get('post_logout_redirect_uri'), `${h.base}/console/`);
    const confirm = await browser.visit(url!);
    t.regex(confirm.body, /Do you want to sign-out/);
    const form = readForms(confirm.body, confirm.url)[0]!;
    const back = await browser.submit(form, { logout: 'yes' });
    t.is(back.url.href, `${h.base}/console/`, 'back on the console');
    // Signed out at the provider: a new sign-in asks for the login again.
    const again = await browser.visit(`${h.base}/console/oidc/login`);
    t.truthy(readForms(again.body, again.url).find((f) => f.fields.prompt === 'login'), 'the provider asks who you are again');
  });
});

test.serial('ok/logout: no end_session_endpoint advertised → undefined (the console logs out locally only)', async (t) => {
  await withSso(t, { idp: { endSession: false } }, async (h) => {
    t.is(await h.sso.logoutUrl(), undefined);
  });
});

test.serial('fail/only GET on the sign-in paths (a HEAD does not spend a code); other paths pass through', async (t) => {
  await withSso(t, {}, async (h) => {
    const browser = new TestBrowser();
    t.is((await browser.request(`${h.base}/console/oidc/callback`, { method: 'POST', form: { state: 'x' } })).status, 404);
    const stopped = await signIn(browser, h.base, 'alice', true);
    t.is((await browser.request(stopped.url, { method: 'HEAD' })).status, 404);
    t.is((await browser.visit(stopped.url)).status, 200, 'the code is still good after the HEAD');
    t.is(h.signedIn.length, 1);
    t.is((await browser.request(`${h.base}/console/oidc/callback`)).headers.get('x-certunnel-error'), 'OIDC_STATE_INVALID');
    const other = await browser.visit(`${h.base}/console/`);
    t.is(other.body, 'console page');
  });
});
