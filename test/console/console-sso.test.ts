/**
 * Single sign-on into the console, in a real Chromium against a real
 * OpenID Connect provider (node-oidc-provider, started here): the sign-in
 * page's link, the provider's login and consent, back in the console with
 * the mapped role and the person's identity in the audit trail; a person
 * without a mapped group refused with a clear page; an operator without the
 * API keys page; sign-out ending the session at the provider too. No
 * console error or CSP violation on the console's pages.
 */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import type { AuditEventView as AuditEvent } from '../../api/index.js';
import { withBroker } from '../../testkit/broker.js';
import { chromiumAvailable, launchBrowser, type TestBrowser } from '../../testkit/browser.js';
import { freePort } from '../../testkit/net.js';
import { startTestIdp } from '../../testkit/oidc-provider.js';

const CLIENT_ID = 'certunnel-console';
const SECRET = 'console-client-secret-for-tests-only';
const ROLES = { 'certunnel-admins': 'admin', 'certunnel-ops': 'operator' };
const ACCOUNTS = [
  { login: 'alice', email: 'alice@example.com', name: 'Alice Admin', groups: ['staff', 'certunnel-admins'] },
  { login: 'oscar', email: 'oscar@example.com', name: 'Oscar Ops', groups: ['certunnel-ops'] },
  { login: 'mallory', email: 'mallory@example.com', name: 'Mallory', groups: ['staff'] },
];

let browser: TestBrowser | undefined;
test.before(async () => {
  if (chromiumAvailable()) browser = await launchBrowser();
});
test.after.always(async () => {
  await browser?.close();
});

/** From the console's sign-in page through the provider's login and consent forms, as a person clicks them. */
async function signInWithSso(page: Page, apiUrl: string, login: string): Promise<void> {
  await page.goto(`${apiUrl}/console/sign-in`);
  await page.getByRole('link', { name: 'Sign in with single sign-on' }).click();
  await page.locator('input[name="login"]').fill(login);
  await page.locator('input[name="password"]').fill('any');
  await page.locator('button[type="submit"]').click();
  // The consent form (first sign-in of this person at this client), then back at the broker.
  await page.waitForURL((url) => url.pathname.startsWith('/console/') || url.pathname.includes('interaction'));
  if (new URL(page.url()).pathname.includes('interaction')) await page.locator('button[type="submit"]').click();
}

test.serial('ok+fail/single sign-on: mapped roles in the console, identity in the audit trail, an unmapped person refused, sign-out at the provider', async (t) => {
  if (!browser) return t.fail('chromium is not installed (/usr/bin/chromium); .ci/run installs it');
  const port = await freePort();
  const apiUrl = `https://127.0.0.1:${port}`;
  const idp = await startTestIdp({
    accounts: ACCOUNTS, claimsIn: 'id_token',
    clients: [{ clientId: CLIENT_ID, clientSecret: SECRET, redirectUris: [`${apiUrl}/console/oidc/callback`], postLogoutRedirectUris: [`${apiUrl}/console/`] }],
  });
  const secretDir = await mkdtemp(join(tmpdir(), 'certunnel-sso-'));
  const secretFile = join(secretDir, 'client-secret');
  await writeFile(secretFile, `${SECRET}\n`, { mode: 0o600 });
  try {
    await withBroker(
      async (b) => {
        // alice: admin, every page, the session named after her.
        const { page, problems } = await browser!.newPage();
        await signInWithSso(page, apiUrl, 'alice');
        await page.waitForURL('**/console/#/**');
        problems.list.length = 0; // the provider's own pages are not under test
        t.regex((await page.locator('#who').textContent()) ?? '', /alice@example\.com · admin|Alice Admin · admin/);
        t.true((await page.locator('#nav a').allTextContents()).includes('API keys'));
        await page.goto(`${apiUrl}/console/#/audit`);
        await page.waitForSelector('table');
        const audit = await b.call<{ items: AuditEvent[] }>(b.admin, 'GET', '/v1/audit?action=console.signin');
        const signIn = audit.items.find((e) => e.actor === 'oidc:alice');
        t.truthy(signIn, 'console.signin by oidc:alice');
        t.like(signIn?.details, { method: 'oidc', email: 'alice@example.com', role: 'admin' });
        const oidcRows = await b.call<{ items: AuditEvent[] }>(b.admin, 'GET', '/v1/audit?action=oidc.signin');
        t.true(oidcRows.items.some((e) => e.actor === 'oidc:alice' && e.outcome === 'ok'));
        t.deepEqual(problems.list, [], 'console errors or CSP violations on the console pages');

        // Sign-out ends the session here and at the provider: its confirmation, then back to the console's sign-in.
        await page.goto(`${apiUrl}/console/#/fleet`);
        await page.getByRole('button', { name: /sign out/i }).click();
        await page.waitForURL((url) => url.origin === idp.issuer);
        await page.locator('button[type="submit"], input[type="submit"]').first().click();
        await page.waitForURL('**/console/sign-in**');
        t.true(idp.requests.some((r) => r.includes('/session/end')), 'the provider was asked to end the session');
        const after = await page.context().request.get(`${apiUrl}/v1/console/session`);
        t.is(after.status(), 401);

        // oscar: operator, no API keys page, and the server refuses them.
        const oscar = await browser!.newPage();
        await signInWithSso(oscar.page, apiUrl, 'oscar');
        await oscar.page.waitForURL('**/console/#/**');
        t.false((await oscar.page.locator('#nav a').allTextContents()).includes('API keys'));
        const keys = await oscar.context.request.get(`${apiUrl}/v1/apikeys`);
        t.is(keys.status(), 403);

        // mallory: signed in at the provider, but no mapped group: a clear refusal, no session.
        const mallory = await browser!.newPage();
        await signInWithSso(mallory.page, apiUrl, 'mallory');
        await mallory.page.waitForURL('**/console/oidc/callback**');
        t.regex((await mallory.page.content()) ?? '', /OIDC_NO_ROLE/);
        t.is((await mallory.context.request.get(`${apiUrl}/v1/console/session`)).status(), 401);
        await Promise.all([page.context().close(), oscar.context.close(), mallory.context.close()]);
      },
      {
        config: {
          api: { listen: `127.0.0.1:${port}`, publicUrl: apiUrl },
          oidc: {
            issuer: idp.issuer, clientId: CLIENT_ID, clientSecretFile: secretFile, roles: ROLES, allowInsecureIssuer: true,
            scopes: ['openid', 'email', 'profile', 'groups'],
          },
        },
      },
    );
  } finally {
    await idp.close();
    await rm(secretDir, { recursive: true, force: true });
  }
});
