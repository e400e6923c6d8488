/**
 * The console in a real Chromium, as an admin sees it: API-key sign-in and
 * its cookie, the fleet list and its filters, a real device (enrolled over
 * the API, its tunnel a real `ssh -R`) going online and offline without a
 * reload, the device page (port block, ssh command, web page link, labels,
 * certificates, audit), revoking it by typing its name and the tunnel
 * dropping; the Broker page; no console error or CSP violation anywhere.
 * Screenshots of the pages go to docs/ when UPDATE_SCREENSHOTS=1.
 */
import test from 'ava';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { withBroker } from '../../testkit/broker.js';
import { browserForFile } from '../../testkit/browser.js';
import { connectDevice, enrollTestDevice } from '../../testkit/device-tunnel.js';
import { startDeviceService } from '../../testkit/gateway.js';
import { isListening } from '../../testkit/net.js';
import { waitFor } from '../../testkit/ssh-client.js';

/** Generous: the console updates within about a second; the box is shared and loaded. */
const LIVE_MS = 15_000;

const file = browserForFile(test);

async function signIn(page: Page, apiUrl: string, key: string): Promise<void> {
  await page.goto(`${apiUrl}/`);
  await page.waitForURL('**/console/sign-in');
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL('**/console/#/**');
}

const rowOf = (page: Page, name: string) => page.locator(`tr[data-device="${name}"]`);

test.serial('ok/admin signs in, filters the fleet, sees a real tunnel come and go live, revokes it and the tunnel drops', async (t) => {
  if (!file.browser) return t.fail('chromium is not installed (/usr/bin/chromium); .ci/run installs it');
  await withBroker(async (b) => {
    const kiosk = await enrollTestDevice(b, 'kiosk-a');
    await enrollTestDevice(b, 'kiosk-b');
    await enrollTestDevice(b, 'lobby-c');
    await b.call(b.admin, 'PUT', `/v1/devices/kiosk-a/labels`, { labels: { site: 'paris' } });
    const service = await startDeviceService('kiosk-a\n');
    const { context, page, problems } = await file.browser!.newPage();
    try {
      await signIn(page, b.broker.apiUrl, b.init.adminKey);
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === '__Host-certunnel-console');
      t.truthy(session, 'the console session cookie is set');
      t.like(session, { httpOnly: true, secure: true, sameSite: 'Strict', path: '/' });
      t.true(session!.expires > Date.now() / 1000 && session!.expires <= Date.now() / 1000 + 8 * 3600 + 60, 'a bounded lifetime');

      // The fleet: every device, then the filters (search, status, label).
      await t.notThrowsAsync(rowOf(page, 'lobby-c').waitFor());
      t.is(await page.locator('tbody tr').count(), 3);
      await page.getByLabel('Search by name').fill('kiosk');
      await waitFor(async () => (await page.locator('tbody tr').count()) === 2, 'the name filter', LIVE_MS);
      await page.getByLabel('Search by name').fill('');
      await page.getByLabel('Label').fill('site=paris');
      await page.getByRole('button', { name: 'Apply' }).click();
      await waitFor(async () => (await page.locator('tbody tr').count()) === 1, 'the label filter', LIVE_MS);
      t.is(await rowOf(page, 'kiosk-a').locator('.label').textContent(), 'site=paris');
      await page.getByLabel('Label').fill('');
      await page.getByLabel('Status').selectOption('online');
      await page.getByText('No device matches.').waitFor();
      await page.getByLabel('Status').selectOption('');
      await page.getByLabel('Sort by').selectOption('name');
      await waitFor(async () => (await page.locator('tbody tr').first().getAttribute('data-device')) === 'kiosk-a', 'sorted by name', LIVE_MS);
      t.deepEqual(await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-device'))), ['kiosk-a', 'kiosk-b', 'lobby-c']);

      // A real tunnel comes up and goes down: the row changes without a reload.
      let ssh = await connectDevice(kiosk, b.broker.sshPort, service.port);
      await rowOf(page, 'kiosk-a').locator('.badge.online').waitFor({ timeout: LIVE_MS });
      t.regex((await rowOf(page, 'kiosk-a').textContent()) ?? '', /127\.0\.0\.1/);
      t.regex((await rowOf(page, 'kiosk-a').locator('td.num').first().textContent()) ?? '', /^\d+$/, 'the certificate serial');
      await page.screenshot({ path: join(file.shots, 'console-fleet.png') });
      await ssh.stop();
      await rowOf(page, 'kiosk-a').locator('.badge.offline').waitFor({ timeout: LIVE_MS });

      // The device page: facts, commands, labels; then revocation by typing the name.
      ssh = await connectDevice(kiosk, b.broker.sshPort, service.port);
      await rowOf(page, 'kiosk-a').locator('.badge.online').waitFor({ timeout: LIVE_MS });
      await rowOf(page, 'kiosk-a').getByRole('link', { name: 'kiosk-a' }).click();
      await page.getByRole('heading', { name: 'kiosk-a' }).waitFor();
      t.regex((await page.locator('dl.facts').textContent()) ?? '', new RegExp(`ssh ${kiosk.port}, http ${kiosk.port + 1}`));
      t.is(await page.locator('#ssh-command').textContent(), 'certunnel ssh kiosk-a');
      const open = page.getByRole('link', { name: 'Open web page' });
      t.is(await open.getAttribute('href'), '/.certunnel/login?device=kiosk-a&next=%2F');
      t.true((await page.locator('table').first().locator('tbody tr').count()) >= 1, 'the certificate history');
      t.regex((await page.locator('table').last().textContent()) ?? '', /device\.enroll/);
      await page.getByLabel('Labels, one key=value per line').fill('site=lyon\nstage=main');
      await page.getByRole('button', { name: 'Save labels' }).click();
      await page.getByText('Labels saved.').waitFor();
      t.deepEqual((await b.call<{ labels: Record<string, string> }>(b.admin, 'GET', '/v1/devices/kiosk-a')).labels, { site: 'lyon', stage: 'main' });
      await page.screenshot({ path: join(file.shots, 'console-device.png'), fullPage: true });

      const revoke = page.getByRole('button', { name: 'Revoke device' });
      await page.getByLabel(/Type the device's name/).fill('kiosk-b');
      t.true(await revoke.isDisabled(), 'another name does not confirm');
      await page.getByLabel(/Type the device's name/).fill('kiosk-a');
      await page.getByLabel('Reason (optional)').fill('stolen');
      t.true(await revoke.isEnabled());
      await revoke.click();
      await waitFor(async () => !(await isListening(kiosk.port)), 'the tunnel to drop', LIVE_MS);
      t.not(await ssh.exited, 0, 'ssh was disconnected');
      await page.locator('dl.facts .badge.revoked').waitFor({ timeout: LIVE_MS });
      const device = await b.call<{ status: string; revokeReason: string; revokedBy: string }>(b.admin, 'GET', '/v1/devices/kiosk-a');
      const keys = await b.call<{ items: Array<{ id: string; role: string }> }>(b.admin, 'GET', '/v1/apikeys');
      t.like(device, { status: 'revoked', revokeReason: 'stolen', revokedBy: `apikey:${keys.items.find((k) => k.role === 'admin')!.id}` });

      // The audit trail names the person: the sign-in and the revocation, by key id and name.
      const audit = await b.call<{ items: Array<{ action: string; actor: string; actorName?: string; outcome: string }> }>(b.admin, 'GET', '/v1/audit?limit=1000');
      const signedIn = audit.items.find((e) => e.action === 'console.signin' && e.outcome === 'ok');
      t.truthy(signedIn);
      t.is(signedIn!.actor, device.revokedBy);
      t.truthy(signedIn!.actorName);
      t.true(audit.items.some((e) => e.action === 'device.labels' && e.actor === device.revokedBy));

      // The Broker page: fingerprints, pin, KRL version, the chart.
      await page.getByRole('link', { name: 'Broker' }).click();
      await page.getByRole('heading', { name: 'Broker' }).waitFor();
      const facts = (await page.locator('dl.facts').textContent()) ?? '';
      t.regex(facts, /SHA256:[A-Za-z0-9+/]{43}/);
      t.true(facts.includes(b.init.apiPin), 'the API pin');
      t.regex(facts, /KRL version[1-9]\d*/);
      t.is(await page.locator('svg.chart').count(), 1);
      await page.screenshot({ path: join(file.shots, 'console-broker.png') });

      // Phone width: still usable (no horizontal scroll of the page itself).
      await page.setViewportSize({ width: 390, height: 800 });
      await page.getByRole('link', { name: 'Fleet' }).click();
      await rowOf(page, 'kiosk-a').waitFor();
      t.true(await page.evaluate<boolean>('document.documentElement.scrollWidth <= window.innerWidth + 1'), 'no page-wide horizontal scroll at 390 px');
      t.deepEqual(problems.list, [], 'no console errors or CSP violations');
    } finally {
      await context.close();
      await service.close();
    }
  });
});
