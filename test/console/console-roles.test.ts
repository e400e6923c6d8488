/**
 * The console in a real Chromium, by role: what each role is shown, and the
 * broker refusing what the console hides (the server enforces, the console
 * only hides); minting a batch and downloading its manifest; API keys (the
 * secret shown once); the audit page and its CSV; sign-in refusals, the CSRF
 * token and same-origin rules, sign-out, and a revoked key ending its
 * session. No console error or CSP violation on any page.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { browserForFile, signInWithKey } from '../../testkit/browser.js';
import { waitFor } from '../../testkit/ssh-client.js';

const file = browserForFile(test);

const navLinks = (page: Page): Promise<string[]> => page.locator('#nav a').allTextContents();

/**
 * What the API answers to this browser context's session cookie (the console's own calls, made outside the page so
 * that the refusals the test provokes are not the page's console errors), with or without the session's CSRF token,
 * from ORIGIN (none: a tool).
 */
async function callAs(context: BrowserContext, apiUrl: string, method: string, path: string, o: { body?: unknown; csrf?: boolean; origin?: string } = {}): Promise<{ status: number; code?: string }> {
  const session = (await (await context.request.get(`${apiUrl}/v1/console/session`)).json()) as { csrfToken: string };
  const headers: Record<string, string> = { ...(o.csrf === false ? {} : { 'x-csrf-token': session.csrfToken }), ...(o.origin ? { origin: o.origin } : {}) };
  const res = await context.request.fetch(`${apiUrl}${path}`, { method, headers, data: o.body });
  const data = (await res.json().catch(() => ({}))) as { error?: { code: string } };
  return { status: res.status(), code: data.error?.code };
}

async function keyOf(b: TestBroker, role: 'admin' | 'operator' | 'provisioner' | 'proxy'): Promise<{ id: string; key: string }> {
  const res = await b.call<{ id: string; key: string }>(b.admin, 'POST', '/v1/apikeys', { role, name: `${role}-person` });
  return res;
}

test.serial('ok/provisioner sees tokens only, mints a batch, downloads its manifest, sees its counts, revokes it; the API refuses the rest', async (t) => {
  if (!file.browser) return t.fail('chromium is not installed (/usr/bin/chromium); .ci/run installs it');
  await withBroker(async (b) => {
    const provisioner = await keyOf(b, 'provisioner');
    const { context, page, problems } = await file.browser!.newPage();
    try {
      await signInWithKey(page, b.broker.apiUrl, provisioner.key);
      t.deepEqual(await navLinks(page), ['Tokens']);
      t.regex(page.url(), /#\/tokens$/);
      await page.goto(`${b.broker.apiUrl}/console/#/fleet`);
      await page.waitForURL('**/#/tokens');
      const api = b.broker.apiUrl;
      t.is((await callAs(context, api, 'GET', '/v1/devices')).code, 'FORBIDDEN', 'the server refuses what the console hides');
      t.is((await callAs(context, api, 'GET', '/v1/audit')).code, 'FORBIDDEN');
      t.is((await callAs(context, api, 'POST', '/v1/apikeys', { body: { role: 'admin', name: 'escalate' } })).code, 'FORBIDDEN');

      await page.getByLabel('Count').fill('3');
      await page.getByLabel('Batch name').fill('factory-7');
      await page.getByLabel('Name prefix').fill('kiosk-');
      await page.getByRole('button', { name: 'Mint tokens' }).click();
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download manifest (CSV)' }).click()]);
      t.is(download.suggestedFilename(), 'certunnel-tokens-factory-7.csv');
      const lines = (await readFile((await download.path())!, 'utf8')).trim().split('\r\n');
      t.is(lines[0], 'token_id,token,batch,bind_name,bind_serial,expires_at');
      t.is(lines.length, 4);
      const [, token, batch, bindName] = lines[1]!.split(',');
      t.is(batch, 'factory-7');
      t.is(bindName, 'kiosk-1');

      // One device enrolls with a token of the manifest: the batch counts it as redeemed.
      await b.call(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'kiosk-1' });
      await page.reload();
      const row = page.locator('tr[data-batch="factory-7"]');
      await row.waitFor();
      t.deepEqual((await row.locator('td.num').allTextContents()).map(Number), [3, 1, 2, 0, 0]);
      await page.screenshot({ path: join(file.shots, 'console-tokens.png'), fullPage: true });
      await row.getByRole('button', { name: 'Revoke unused' }).click();
      await row.getByRole('button', { name: 'Confirm: revoke 2 unused' }).click();
      await page.locator('tr[data-batch="factory-7"] td.num').nth(4).filter({ hasText: '2' }).waitFor();
      t.deepEqual((await page.locator('tr[data-batch="factory-7"] td.num').allTextContents()).map(Number), [3, 1, 0, 0, 2]);
      t.deepEqual(problems.list, [], 'no console errors or CSP violations');
    } finally {
      await context.close();
    }
  });
});

test.serial('ok/operator sees no API keys or tokens; admin manages keys, reads the audit; fail/csrf, cross-site, proxy key, wrong key; sign-out; a revoked key ends its session', async (t) => {
  if (!file.browser) return t.fail('chromium is not installed (/usr/bin/chromium); .ci/run installs it');
  await withBroker(async (b) => {
    const operator = await keyOf(b, 'operator');
    const proxy = await keyOf(b, 'proxy');
    const op = await file.browser!.newPage({ width: 390, height: 800 });
    const admin = await file.browser!.newPage();
    try {
      // Operator: the fleet, the audit, the broker; never API keys or tokens, and the server agrees.
      await signInWithKey(op.page, b.broker.apiUrl, operator.key);
      t.deepEqual(await navLinks(op.page), ['Fleet', 'Audit', 'Broker']);
      await op.page.goto(`${b.broker.apiUrl}/console/#/keys`);
      await op.page.waitForURL('**/#/fleet');
      const api = b.broker.apiUrl;
      t.is((await callAs(op.context, api, 'GET', '/v1/apikeys')).code, 'FORBIDDEN');
      t.is((await callAs(op.context, api, 'POST', '/v1/tokens', { body: { count: 1 } })).code, 'FORBIDDEN');

      // Admin: every page; a key created (its secret shown once) and revoked.
      await signInWithKey(admin.page, b.broker.apiUrl, b.init.adminKey);
      t.deepEqual(await navLinks(admin.page), ['Fleet', 'Tokens', 'API keys', 'Audit', 'Broker']);
      // CSRF: the session cookie alone does not change anything.
      const before = (await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/apikeys')).items.length;
      t.deepEqual(await callAs(admin.context, api, 'POST', '/v1/apikeys', { body: { role: 'admin', name: 'csrf' }, csrf: false }), { status: 403, code: 'CSRF_TOKEN_INVALID' });
      const evil = { body: { role: 'admin', name: 'csrf' }, origin: 'https://evil.example' };
      t.deepEqual(await callAs(admin.context, api, 'POST', '/v1/apikeys', evil), { status: 403, code: 'CSRF_TOKEN_INVALID' }, 'the token alone is not enough from another origin');
      t.is((await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/apikeys')).items.length, before, 'nothing was created');

      await admin.page.getByRole('link', { name: 'API keys' }).click();
      await admin.page.getByLabel('Name').fill('carol');
      await admin.page.getByLabel('Role').selectOption('operator');
      await admin.page.getByRole('button', { name: 'Create key' }).click();
      const secret = (await admin.page.locator('#new-key-secret').textContent()) ?? '';
      t.regex(secret, /^ctk_/);
      const carol = (await b.call<{ items: Array<{ id: string; name: string; status: string }> }>(b.admin, 'GET', '/v1/apikeys')).items.find((k) => k.name === 'carol')!;
      t.is(carol.status, 'active');
      await admin.page.screenshot({ path: join(file.shots, 'console-keys.png'), fullPage: true });
      // Revoking the operator's key ends the operator's console session on its next call.
      const row = admin.page.locator(`tr[data-key="${operator.id}"]`);
      await row.getByRole('button', { name: 'Revoke' }).click();
      await row.getByRole('button', { name: /Confirm: revoke/ }).click();
      await admin.page.locator(`tr[data-key="${operator.id}"] td:nth-child(4)`).filter({ hasText: 'revoked' }).waitFor();
      await op.page.getByRole('link', { name: 'Audit' }).click();
      await op.page.waitForURL('**/console/sign-in');

      // The audit page: filtered by action, exported as CSV with the person's key name.
      await admin.page.getByRole('link', { name: 'Audit' }).click();
      await admin.page.getByLabel('Action').fill('console.signin');
      await admin.page.getByRole('button', { name: 'Filter' }).click();
      const rows = admin.page.locator('tbody tr');
      await waitFor(async () => (await rows.count()) >= 2 && (await rows.allTextContents()).every((r) => r.includes('console.signin')), 'the action filter', 15_000);
      t.pass('only console.signin rows');
      await admin.page.screenshot({ path: join(file.shots, 'console-audit.png') });
      const [download] = await Promise.all([admin.page.waitForEvent('download'), admin.page.getByRole('button', { name: 'Export CSV' }).click()]);
      const csv = await readFile((await download.path())!, 'utf8');
      t.regex(csv.split('\r\n')[0]!, /^id,at,actor,actor_name,action,target,outcome,remote_addr,details$/);
      t.regex(csv, /operator-person,console\.signin/);

      // Sign-in refusals: a wrong key (audited), a proxy key, and a form posted from another site.
      const other = await file.browser!.newPage();
      try {
        await other.page.goto(`${b.broker.apiUrl}/console/sign-in`);
        await other.page.getByLabel('API key').fill('ctk_nope');
        await other.page.getByRole('button', { name: 'Sign in' }).click();
        await other.page.getByText('That API key was not accepted.').waitFor();
        await other.page.getByLabel('API key').fill(proxy.key);
        await other.page.getByRole('button', { name: 'Sign in' }).click();
        await other.page.getByText(/A proxy key opens device web pages only/).waitFor();
        t.false((await other.context.cookies()).some((c) => c.name === '__Host-certunnel-console'), 'no session');
        const crossSite = await other.context.request.post(`${b.broker.apiUrl}/console/sign-in`, {
          headers: { origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' }, data: `apiKey=${encodeURIComponent(b.init.adminKey)}`, maxRedirects: 0,
        });
        t.is(crossSite.status(), 403);
        t.false((await other.context.cookies()).some((c) => c.name === '__Host-certunnel-console'), 'no session from another site');
        t.deepEqual(other.problems.list.filter((p) => !/status of 40[13]/.test(p)), [], 'only the refused sign-ins logged as failed loads');
      } finally {
        await other.context.close();
      }
      const refusals = await b.call<{ items: Array<{ action: string; outcome: string }> }>(b.admin, 'GET', '/v1/audit?action=console.signin&limit=1000');
      t.true(refusals.items.some((e) => e.outcome === 'UNAUTHENTICATED'));
      t.true(refusals.items.some((e) => e.outcome === 'API_KEY_PROXY_ONLY'));

      // Sign-out: the session is gone, the console sends the browser to sign in.
      await admin.page.getByRole('button', { name: 'Sign out' }).click();
      await admin.page.waitForURL('**/console/sign-in');
      t.false((await admin.context.cookies()).some((c) => c.name === '__Host-certunnel-console'));
      await admin.page.goto(`${b.broker.apiUrl}/console/`);
      await admin.page.waitForURL('**/console/sign-in');
      t.deepEqual(admin.problems.list, [], 'no console errors or CSP violations');
      t.deepEqual(op.problems.list.filter((p) => !/status of 401/.test(p)), [], 'only the refused call after the key was revoked');
    } finally {
      await op.context.close();
      await admin.context.close();
    }
  });
});
