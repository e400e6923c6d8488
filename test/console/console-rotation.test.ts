/**
 * The Broker page's trust rotation in a real Chromium (issue #14): a real
 * rotation started through the API on a real broker, devices enrolled over
 * the API (one seen through a real `ssh -R` tunnel, one an old agent that
 * never was, one that learned the next trust at enrollment, then fifty more
 * lagging ones), and what an admin is shown: the phase, the fingerprints,
 * the counts, the lagging devices with their last-seen and links, "and N
 * more"; then a forced commit and a rollback from the page, each confirmed
 * by a second click that says what it does, and a commit the broker refuses
 * (the rotation ended between the clicks) shown as refused. An operator is shown none of
 * it and the page asks the API for none of it. No console error or CSP
 * violation on any page.
 */
import test from 'ava';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { AGENT_CAPABILITIES, type BrokerStatusResponse, type DeviceView, type ListAuditResponse, type RotationResponse, type RotationStatusResponse } from '../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { browserForFile, signInWithKey } from '../../testkit/browser.js';
import { connectDevice, enrollTestDevice } from '../../testkit/device-tunnel.js';
import { startDeviceService } from '../../testkit/gateway.js';
import { waitFor } from '../../testkit/ssh-client.js';

/** Generous: a loaded, shared machine. */
const WAIT_MS = 15_000;

const file = browserForFile(test);

async function openBrokerPage(page: Page, apiUrl: string): Promise<void> {
  await page.goto(`${apiUrl}/console/#/broker`);
  await page.reload();
  await page.getByRole('heading', { name: 'Broker', exact: true }).waitFor();
}

/** Enrolls without a name through the API; CAPABILITIES as an agent of 0.5 sends them (none: an older agent). */
async function enroll(b: TestBroker, token: string, name: string, capabilities?: string[]): Promise<void> {
  await b.call(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(generateKeyPair().publicKey), name, ...(capabilities ? { capabilities } : {}) });
}

async function mint(b: TestBroker, count: number): Promise<string[]> {
  return (await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count })).tokens.map((t) => t.token);
}

const lastSeenOf = async (b: TestBroker, name: string) => (await b.call<DeviceView>(b.admin, 'GET', `/v1/devices/${name}`)).lastSeenAt;

test.serial('ok/admin follows a host-key rotation on the Broker page (phase, counts, lagging devices), commits it with force and rolls back the next; fail/an operator is shown none of it', async (t) => {
  if (!file.browser) return t.fail('chromium is not installed (/usr/bin/chromium); .ci/run installs it');
  await withBroker(async (b) => {
    const api = b.broker.apiUrl;
    // One device seen through a real tunnel (so it has a last-seen), one never seen.
    const seen = await enrollTestDevice(b, 'kiosk-seen');
    const service = await startDeviceService('kiosk-seen\n');
    const ssh = await connectDevice(seen, b.broker.sshPort, service.port);
    await ssh.stop();
    await waitFor(async () => (await lastSeenOf(b, 'kiosk-seen')) !== null, 'kiosk-seen to have a last-seen', WAIT_MS);
    const [never] = await mint(b, 1);
    await enroll(b, never!, 'lobby-never');
    const operator = await b.call<{ key: string }>(b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'olivia' });

    const admin = await file.browser!.newPage();
    const op = await file.browser!.newPage();
    try {
      await signInWithKey(admin.page, api, b.init.adminKey);
      await signInWithKey(op.page, api, operator.key);

      // No rotation yet: said so, and nothing finished to tell of.
      await openBrokerPage(admin.page, api);
      const section = admin.page.locator('#rotation');
      await section.getByText('No rotation under way.').waitFor();
      t.is(await admin.page.locator('#rotation-last').count(), 0);

      // A real rotation through the API: a single node is in learn at once. A 0.5 agent enrolls during learn and learns
      // the next trust; the two enrolled before have not.
      const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'host-key' });
      const [fresh] = await mint(b, 1);
      await enroll(b, fresh!, 'kiosk-new', [AGENT_CAPABILITIES.trustSet]);
      const status = await b.call<RotationStatusResponse>(b.admin, 'GET', '/v1/rotations/current');
      t.like(status, { rotation: { phase: 'learn' }, devices: { active: 3, learned: 1, laggingNotListed: 0 } });

      await openBrokerPage(admin.page, api);
      await section.getByRole('heading', { name: 'Trust rotation' }).waitFor();
      const facts = (await section.locator('dl.facts').textContent()) ?? '';
      t.true(facts.includes(`Rotation${started.rotation.id} of host-key`), facts);
      t.is(await section.locator('.badge.phase').textContent(), 'learn');
      t.true(facts.includes(started.rotation.from) && facts.includes(started.rotation.next), 'both fingerprints');
      t.true(facts.includes('Nodes1 of 1 up have loaded the next key'), facts);
      t.true(facts.includes('Devices1 of 3 active have learned the next trust'), facts);
      t.regex(facts, /Started.+ by apikey:key_/);
      await section.getByRole('heading', { name: 'Lagging devices (2)' }).waitFor();
      // Least recently seen first: never, then kiosk-seen with when it was seen.
      t.deepEqual(await section.locator('tr[data-lagging]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-lagging'))), ['lobby-never', 'kiosk-seen']);
      t.regex((await section.locator('tr[data-lagging="lobby-never"]').textContent()) ?? '', /never$/);
      t.regex((await section.locator('tr[data-lagging="kiosk-seen"]').textContent()) ?? '', /(s|min) ago \(/);
      t.is(await section.locator('tr[data-lagging="kiosk-new"]').count(), 0, 'the device that learned is not lagging');
      t.is(await admin.page.locator('#lagging-more').count(), 0);
      await admin.page.screenshot({ path: join(file.shots, 'console-rotation.png'), fullPage: true });

      // The lagging device's name opens its page, as the fleet's links do.
      await section.getByRole('link', { name: 'kiosk-seen' }).click();
      await admin.page.getByRole('heading', { name: 'kiosk-seen' }).waitFor();
      t.regex(admin.page.url(), /#\/device\/kiosk-seen$/);

      // An operator: the Broker page without the section, and no call for it (a refused one would be a console error).
      await openBrokerPage(op.page, api);
      await op.page.locator('dl.facts').waitFor();
      t.is(await op.page.getByRole('heading', { name: 'Trust rotation' }).count(), 0);
      t.is(await op.page.locator('#rotation').count(), 0);
      const opBroker = (await (await op.context.request.get(`${api}/v1/broker`)).json()) as BrokerStatusResponse;
      t.false('rotation' in opBroker, 'the operator is not told of the rotation');
      t.is((await op.context.request.get(`${api}/v1/rotations/current`)).status(), 403, 'and the API refuses its status');

      // Fifty more old agents: the list stops at 50 and says how many more.
      const tokens = await mint(b, 50);
      for (const [i, token] of tokens.entries()) await enroll(b, token, `old-${String(i).padStart(2, '0')}`);
      await openBrokerPage(admin.page, api);
      await section.getByRole('heading', { name: 'Lagging devices (52)' }).waitFor();
      t.is(await section.locator('tr[data-lagging]').count(), 50);
      t.is(await admin.page.locator('#lagging-more').textContent(), 'and 2 more');
      t.regex((await section.locator('dl.facts').textContent()) ?? '', /Devices1 of 53 active/);

      // Commit with force: the first click says what happens to the lagging devices; the second commits.
      await section.getByRole('button', { name: 'Commit with force…' }).click();
      const warning = (await section.locator('.danger-zone').textContent()) ?? '';
      t.true(warning.includes(`${started.rotation.next} becomes the host-key on every node`), warning);
      t.true(warning.includes("52 of 53 active devices have not learned it: they no longer recognise the broker's SSH server"), warning);
      t.is((await b.call<RotationStatusResponse>(b.admin, 'GET', '/v1/rotations/current')).rotation.id, started.rotation.id, 'the first click changes nothing');
      await section.getByRole('button', { name: 'Confirm: commit with force' }).click();
      await section.getByText('No rotation under way.').waitFor({ timeout: WAIT_MS });
      const last = (await admin.page.locator('#rotation-last').textContent()) ?? '';
      t.true(last.includes(`rotation ${started.rotation.id} of host-key, committed with force`), last);
      t.true(last.includes(`${started.rotation.next} replaced ${started.rotation.from}`), last);
      t.is((await b.call<BrokerStatusResponse>(b.admin, 'GET', '/v1/broker')).fingerprints.hostKey, started.rotation.next, 'the next host key is the broker\'s');
      const commits = await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=rotation.commit');
      t.is(commits.items.length, 1);
      t.like(commits.items[0], { target: `rotation:${started.rotation.id}`, details: { outcome: 'forced', devicesLagging: 52 } });

      // A rotation that ends elsewhere between the two clicks: the broker's refusal is shown, nothing else happens.
      const ended = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
      await openBrokerPage(admin.page, api);
      await section.getByRole('button', { name: 'Commit with force…' }).click();
      t.true(((await section.locator('.danger-zone').textContent()) ?? '').includes("their certificates are refused from then on"), 'the user CA\'s consequence');
      await b.call(b.admin, 'POST', '/v1/rotations/current/rollback');
      await section.getByRole('button', { name: 'Confirm: commit with force' }).click();
      await section.locator('#rotation-result').getByText(/^ROTATION_NOT_FOUND: /).waitFor({ timeout: WAIT_MS });
      t.true(await section.getByRole('button', { name: 'Roll back…' }).isEnabled(), 'the buttons are usable again');
      t.is((await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=rotation.commit')).items.length, 1, 'no second commit');

      // Roll back the next one from the page: the current user CA stays.
      const second = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
      await openBrokerPage(admin.page, api);
      await section.locator('.badge.phase').waitFor();
      await section.getByRole('button', { name: 'Roll back…' }).click();
      t.true(((await section.locator('.danger-zone').textContent()) ?? '').includes(`${second.rotation.next} is dropped and ${second.rotation.from} stays`));
      await section.getByRole('button', { name: 'Confirm: roll back' }).click();
      await section.getByText('No rotation under way.').waitFor({ timeout: WAIT_MS });
      t.true(((await admin.page.locator('#rotation-last').textContent()) ?? '').includes(`rotation ${second.rotation.id} of user-ca, rolled back`));
      t.is((await b.call<BrokerStatusResponse>(b.admin, 'GET', '/v1/broker')).fingerprints.userCa, second.rotation.from);
      const rollbacks = await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=rotation.rollback');
      t.deepEqual(rollbacks.items.map((e) => e.target), [`rotation:${ended.rotation.id}`, `rotation:${second.rotation.id}`]);
      t.regex(rollbacks.items[1]!.actor, /^apikey:key_/, 'the admin\'s console session acted');

      t.deepEqual(admin.problems.list.filter((p) => !/status of 404/.test(p)), [], 'no console errors or CSP violations');
      t.is(admin.problems.list.length, 1, 'but the refused commit');
      t.deepEqual(op.problems.list, [], 'the operator\'s page made no refused call');
    } finally {
      await admin.context.close();
      await op.context.close();
      await service.close();
    }
  });
});
