/**
 * `certunnel apikey create|list|revoke`, the real CLI (a child process)
 * against a real broker: over the API with an admin key, and with --local
 * straight on the data directory (no key needed: the way back when the
 * admin key is lost).
 */
import test from 'ava';
import { apiRequest, type ApiKeyView, type ListApiKeysResponse, type RevokeApiKeyResponse } from '../../api/index.js';
import { withBroker } from '../../testkit/broker.js';
import { runCli } from '../../testkit/cli.js';
import { apiErrorCode as code } from '../../testkit/api-error.js';

test('ok/apikey: create with --expires-in, list and revoke over the API, --json', (t) =>
  withBroker(async (b) => {
    const admin = { CERTUNNEL_API_KEY: b.init.adminKey };
    const created = await runCli(['apikey', 'create', '--data', b.dir, '--role', 'proxy', '--name', 'viewer', '--expires-in', '2h']);
    t.is(created.code, 0, created.stderr);
    const key = created.stdout.trim();
    t.regex(created.stderr, /created proxy key key_[a-z2-7]{16} \(viewer, expires 20\d\d-/);

    const listed = await runCli(['apikey', 'list', '--data', b.dir, '--json'], admin);
    t.is(listed.code, 0, listed.stderr);
    const viewer = (JSON.parse(listed.stdout) as ListApiKeysResponse).items.find((k) => k.name === 'viewer')!;
    t.is(viewer.role, 'proxy');
    t.is(viewer.status, 'active');
    const hours = (Date.parse(viewer.expiresAt!) - Date.now()) / 3600_000;
    t.true(hours > 1.5 && hours <= 2, `expires in ${hours} h`);
    t.false(listed.stdout.includes(key.split('.')[1]!), 'list never shows a secret');
    const table = await runCli(['apikey', 'list', '--data', b.dir], admin);
    t.regex(table.stdout, /^ID\s+NAME\s+ROLE\s+STATUS\s+EXPIRESAT/m);
    t.regex(table.stdout, /viewer\s+proxy\s+active/);

    const revoked = await runCli(['apikey', 'revoke', viewer.id, '--data', b.dir], admin);
    t.is(revoked.code, 0, revoked.stderr);
    t.is(revoked.stdout, `revoked proxy key ${viewer.id} (viewer)\n`);
    const again = await runCli(['apikey', 'revoke', viewer.id, '--data', b.dir, '--json'], admin);
    t.true((JSON.parse(again.stdout) as RevokeApiKeyResponse).alreadyRevoked);
  }));

test('ok/apikey create --json: one JSON document with the key, which works; help describes the subcommand', (t) =>
  withBroker(async (b) => {
    const created = await runCli(['apikey', 'create', '--data', b.dir, '--role', 'operator', '--name', 'ci-bot', '--expires-in', '1d', '--json']);
    t.is(created.code, 0, created.stderr);
    t.is(created.stderr, '', 'nothing but the document: scripts read stdout');
    const doc = JSON.parse(created.stdout) as Record<string, unknown>;
    t.deepEqual(Object.keys(doc), ['id', 'name', 'role', 'key', 'expiresAt']);
    t.regex(String(doc.id), /^key_[a-z2-7]{16}$/);
    t.is(doc.name, 'ci-bot');
    t.is(doc.role, 'operator');
    t.true(String(doc.key).startsWith(`ctk_${String(doc.id)}.`));
    const hours = (Date.parse(String(doc.expiresAt)) - Date.now()) / 3600_000;
    t.true(hours > 23 && hours <= 24, `expires in ${hours} h`);
    // The printed key is the real one: the broker accepts it with its role.
    t.is(await code(apiRequest({ ...b.admin, apiKey: String(doc.key) }, 'GET', '/v1/devices')), 'NONE');
    t.is(await code(apiRequest({ ...b.admin, apiKey: String(doc.key) }, 'GET', '/v1/apikeys')), 'FORBIDDEN');

    const never = await runCli(['apikey', 'create', '--data', b.dir, '--role', 'provisioner', '--name', 'factory', '--json']);
    t.is((JSON.parse(never.stdout) as { expiresAt: unknown }).expiresAt, null);
    const bad = await runCli(['apikey', 'create', '--data', b.dir, '--role', 'root', '--name', 'x', '--json']);
    t.is(bad.code, 1);
    t.is(bad.stdout, '');
    t.is((JSON.parse(bad.stderr) as { error: { code: string } }).error.code, 'BAD_ARGUMENT');

    const help = await runCli(['apikey', 'create', '--help']);
    t.regex(help.stdout, /^make an API key/m);
    t.regex(help.stdout, /--json\s+print \{"id","name","role","key","expiresAt"\}/);
  }));

test('ok/apikey --local: list and revoke on the data directory without a key; the last admin needs --force', (t) =>
  withBroker(async (b) => {
    const adminId = b.init.adminKey.split('.')[0]!.slice('ctk_'.length);
    const refused = await runCli(['apikey', 'revoke', adminId, '--data', b.dir, '--local']);
    t.is(refused.code, 1);
    t.regex(refused.stderr, /LAST_ADMIN_KEY/);
    t.is(await code(apiRequest(b.admin, 'GET', '/v1/apikeys')), 'NONE');

    const forced = await runCli(['apikey', 'revoke', adminId, '--data', b.dir, '--local', '--force', '--json']);
    t.is(forced.code, 0, forced.stderr);
    t.is((JSON.parse(forced.stdout) as RevokeApiKeyResponse).key.status, 'revoked');
    t.is(await code(apiRequest(b.admin, 'GET', '/v1/apikeys')), 'API_KEY_REVOKED', 'the running broker sees it on the next request');

    const listed = await runCli(['apikey', 'list', '--data', b.dir, '--local', '--json']);
    t.deepEqual((JSON.parse(listed.stdout) as ListApiKeysResponse).items.map((k: ApiKeyView) => [k.id, k.status]), [[adminId, 'revoked']]);
    const audit = (await b.broker.store.listAudit({ action: 'apikey.revoke' })).items;
    t.deepEqual(audit.map((e) => [e.actor, e.target, e.details]), [['local-cli', adminId, { name: 'initial-admin', role: 'admin', alreadyRevoked: false, force: true }]]);
  }));

test('fail/apikey: bad arguments get a code and change nothing; help names the subcommands', (t) =>
  withBroker(async (b) => {
    const cases: Array<[string[], RegExp]> = [
      [['apikey', 'revoke', 'key_aaaaaaaaaaaaaaaa', '--local'], /BAD_ARGUMENT: --local needs --data/],
      [['apikey', 'create', '--data', b.dir, '--role', 'operator', '--name', 'x', '--expires-in', '0'], /BAD_ARGUMENT/],
      [['apikey', 'create', '--data', b.dir, '--role', 'operator', '--name', 'x', '--expires-in', 'soon'], /BAD_ARGUMENT: not a duration/],
      [['apikey', 'create', '--data', b.dir, '--role', 'root', '--name', 'x'], /BAD_ARGUMENT: --role must be one of admin, operator, provisioner, proxy/],
      [['apikey', 'revoke', 'key_aaaaaaaaaaaaaaaa', '--data', b.dir, '--local'], /NOT_FOUND/],
    ];
    for (const [args, want] of cases) {
      const res = await runCli(args);
      t.is(res.code, 1, args.join(' '));
      t.regex(res.stderr, want, args.join(' '));
    }
    t.is((await apiRequest<ListApiKeysResponse>(b.admin, 'GET', '/v1/apikeys')).items.length, 1);
    const help = await runCli(['apikey', '--help']);
    for (const sub of ['create', 'list', 'revoke']) t.regex(help.stdout, new RegExp(`^  ${sub}\\b`, 'm'));
    const revokeHelp = await runCli(['apikey', 'revoke', '--help']);
    t.regex(revokeHelp.stdout, /--force/);
    t.regex(revokeHelp.stdout, /--local/);
  }));
