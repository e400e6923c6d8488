/**
 * provisioning/flash.ts and verify.ts on image roots in temporary
 * directories: files, owners from the image's own /etc/passwd, modes, the
 * enable link, symlinks read as the device reads them, refusals, and every
 * verify check failing when its condition is broken.
 */
import test from 'ava';
import { access, chmod, chown, lstat, mkdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type ApiClientOptions, ApiError } from '../../api/index.js';
import {
  findRepoUnit, flashImage, parseAgentUnit, resolveInRoot, verifyImage, type BrokerCaResponse, type DeviceBundle, type VerifyReport,
} from '../../provisioning/index.js';
import { cliArgs, REPO_ROOT } from '../../testkit/cli.js';
import { runCommand } from '../../testkit/openssh.js';
import { fakeBundle, FIXTURE_UNIT, makeImage, tempDir } from './helpers.js';

async function withImage(fn: (ctx: { dir: string; root: string; unit: string }) => Promise<void>, options: Parameters<typeof makeImage>[2] = {}): Promise<void> {
  const { dir, cleanup } = await tempDir('certunnel-flash-');
  try {
    const unit = join(dir, 'certunnel-agent.service');
    await writeFile(unit, FIXTURE_UNIT);
    await fn({ dir, root: await makeImage(dir, 'root', options), unit });
  } finally {
    await cleanup();
  }
}

const check = (r: VerifyReport, name: string): string => r.checks.find((c) => c.name === name)?.status ?? 'absent';
const tokenOf = (bundle: DeviceBundle): string => (bundle.agent.enroll as { token: string }).token;
/** agent.json as flash writes it next to a token file: the bundle's, without enroll.token. */
const withoutToken = (bundle: DeviceBundle): unknown => {
  const { token: _token, ...enroll } = bundle.agent.enroll as Record<string, unknown>;
  return { ...bundle.agent, enroll };
};
/** An older unit (already in some images): no --token-file, so the token stays in agent.json. */
const LEGACY_UNIT = FIXTURE_UNIT.replace(/ --token-file \S+/, '').replace(/^(Load|Set)Credential=.*\n/gm, '');

test('ok/flash: token in its own 0600 root file, agent config 0644 without it, state dir 0700 the image\'s certunnel user\'s, unit installed and enabled; verify passes', async (t) => {
  await withImage(async ({ root, unit }) => {
    const bundle = fakeBundle();
    const report = await flashImage({ root, bundle, unitSource: unit });
    const config = await lstat(join(root, 'etc/certunnel/agent.json'));
    t.deepEqual([config.uid, config.gid, config.mode & 0o777], [0, 0, 0o644], 'no secret in it: readable by the agent whatever its uid');
    const configText = await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8');
    t.false(configText.includes(tokenOf(bundle)), 'no token in agent.json');
    t.deepEqual(JSON.parse(configText), withoutToken(bundle));
    const tokenFile = await lstat(join(root, 'etc/certunnel/enroll-token'));
    t.deepEqual([tokenFile.uid, tokenFile.gid, tokenFile.mode & 0o777], [0, 0, 0o600], 'root\'s: systemd reads it for the agent (LoadCredential=)');
    t.is(await readFile(join(root, 'etc/certunnel/enroll-token'), 'utf8'), `${tokenOf(bundle)}\n`);
    const state = await lstat(join(root, 'var/lib/certunnel'));
    t.true(state.isDirectory());
    t.is(state.mode & 0o777, 0o700);
    t.deepEqual([state.uid, state.gid], [999, 998], 'uid and gid from the image, not this machine');
    const record = await readFile(join(root, 'etc/certunnel/provisioning.json'), 'utf8');
    t.is((await lstat(join(root, 'etc/certunnel/provisioning.json'))).mode & 0o777, 0o644);
    t.false(record.includes((bundle.agent.enroll as { token: string }).token), 'no secret in the world-readable record');
    t.is(await readFile(join(root, 'etc/systemd/system/certunnel-agent.service'), 'utf8'), FIXTURE_UNIT);
    t.is(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/certunnel-agent.service')), '/etc/systemd/system/certunnel-agent.service');
    t.deepEqual(report.warnings, ['/usr/bin/certunnel (the unit\'s ExecStart) is not in the image yet: install certunnel there']);

    const verified = await verifyImage({ root, online: false });
    t.true(verified.ok, JSON.stringify(verified.checks));
    t.deepEqual(verified.checks.map((c) => [c.name, c.status]), [
      ['unit', 'ok'], ['enabled', 'ok'], ['program', 'warn'], ['owner', 'ok'], ['agent-config', 'ok'], ['enroll-token', 'ok'], ['provisioning', 'ok'],
      ['token-expiry', 'ok'], ['state-dir', 'ok'], ['broker', 'skip'], ['token-status', 'skip'],
    ]);

    // The same bundle again: nothing to refuse, nothing changes.
    await t.notThrowsAsync(flashImage({ root, bundle, unitSource: unit }));
    t.true((await verifyImage({ root, online: false })).ok);
  });
});

test('ok/the shipped unit (DynamicUser=yes, the token as a credential) with a static certunnel-agent user: it owns the state dir; the token file is root\'s 0600', async (t) => {
  await withImage(async ({ root }) => {
    const shipped = await findRepoUnit();
    t.truthy(shipped, 'scripts/systemd/certunnel-agent.service');
    const parsed = parseAgentUnit(await readFile(shipped!, 'utf8'));
    t.true(parsed.dynamicUser);
    t.deepEqual(parsed.tokenFile, { path: '/etc/certunnel/enroll-token', credential: true });
    const bundle = fakeBundle();
    const report = await flashImage({ root, bundle }); // the default unit: the shipped one
    t.false(report.warnings.some((w) => /dynamic user/.test(w)), report.warnings.join('; '));
    const config = await lstat(join(root, 'etc/certunnel/agent.json'));
    t.deepEqual([config.uid, config.gid, config.mode & 0o777], [0, 0, 0o644]);
    t.false((await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8')).includes(tokenOf(bundle)));
    const tokenFile = await lstat(join(root, 'etc/certunnel/enroll-token'));
    t.deepEqual([tokenFile.uid, tokenFile.mode & 0o777], [0, 0o600]);
    t.deepEqual((await lstat(join(root, 'var/lib/certunnel'))).uid, 999);
    t.is(await readFile(join(root, 'etc/systemd/system/certunnel-agent.service'), 'utf8'), await readFile(shipped!, 'utf8'));
    const verified = await verifyImage({ root, online: false });
    t.true(verified.ok, JSON.stringify(verified.checks));
    t.is(check(verified, 'owner'), 'ok');
  }, { user: 'certunnel-agent' });
});

test('security/the shipped unit without a static user: the token is never readable by all (own 0600 root file; agent.json 0644 holds none), no warning', async (t) => {
  await withImage(async ({ root }) => {
    const bundle = fakeBundle();
    const report = await flashImage({ root, bundle });
    t.false(report.warnings.some((w) => /dynamic user|readable by/.test(w)), report.warnings.join('; '));
    const config = await lstat(join(root, 'etc/certunnel/agent.json'));
    t.deepEqual([config.uid, config.mode & 0o777], [0, 0o644]);
    t.false((await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8')).includes(tokenOf(bundle)), 'no token in the world-readable config');
    const tokenFile = await lstat(join(root, 'etc/certunnel/enroll-token'));
    t.deepEqual([tokenFile.uid, tokenFile.gid, tokenFile.mode & 0o777], [0, 0, 0o600]);
    const state = await lstat(join(root, 'var/lib/certunnel'));
    t.deepEqual([state.uid, state.mode & 0o777], [0, 0o700], 'root\'s until systemd hands it to the dynamic user');
    const verified = await verifyImage({ root, online: false });
    t.true(verified.ok, JSON.stringify(verified.checks));
    t.is(check(verified, 'owner'), 'ok');
    t.is(check(verified, 'enroll-token'), 'ok');
    await chmod(join(root, 'etc/certunnel/agent.json'), 0o600);
    t.is(check(await verifyImage({ root, online: false }), 'agent-config'), 'fail', 'the dynamic user could not read it');
  });
});

test('ok+security/an older unit without --token-file: the token stays in agent.json, 0600 the agent user\'s; with a dynamic user and no static one flash refuses', async (t) => {
  await withImage(async ({ dir, root }) => {
    const legacy = join(dir, 'legacy.service');
    await writeFile(legacy, LEGACY_UNIT);
    t.is(parseAgentUnit(LEGACY_UNIT).tokenFile, null);
    const bundle = fakeBundle();
    await flashImage({ root, bundle, unitSource: legacy });
    const config = await lstat(join(root, 'etc/certunnel/agent.json'));
    t.deepEqual([config.uid, config.gid, config.mode & 0o777], [999, 998, 0o600]);
    t.deepEqual(JSON.parse(await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8')), bundle.agent);
    await t.throwsAsync(access(join(root, 'etc/certunnel/enroll-token')));
    const verified = await verifyImage({ root, online: false });
    t.true(verified.ok, JSON.stringify(verified.checks));
    t.is(check(verified, 'enroll-token'), 'absent');
    await chmod(join(root, 'etc/certunnel/agent.json'), 0o644);
    t.is(check(await verifyImage({ root, online: false }), 'agent-config'), 'fail', 'it holds the token');

    const dynamic = join(dir, 'dynamic.service');
    await writeFile(dynamic, LEGACY_UNIT.replace('User=certunnel\nGroup=certunnel\n', 'DynamicUser=yes\n'));
    const fresh = await makeImage(dir, 'fresh', { user: false });
    await t.throwsAsync(flashImage({ root: fresh, bundle, unitSource: dynamic }), { code: 'UNIT_INVALID', message: /dynamic user/ });
    await t.throwsAsync(access(join(fresh, 'etc/certunnel/agent.json')), undefined, 'nothing written');
  });
});

test('ok/an image without the unit\'s user: root owns the files, with a warning (and verify warns too)', async (t) => {
  await withImage(async ({ root, unit }) => {
    const report = await flashImage({ root, bundle: fakeBundle(), unitSource: unit });
    t.regex(report.warnings[0]!, /user certunnel .* not in the image's \/etc\/passwd/);
    const state = await lstat(join(root, 'var/lib/certunnel'));
    t.deepEqual([state.uid, state.gid], [0, 0]);
    const verified = await verifyImage({ root, online: false });
    t.true(verified.ok);
    t.is(check(verified, 'owner'), 'warn');
  }, { user: false });
});

test('ok/a unit already in the image (/lib on merged /usr) is enabled where it is, not installed again', async (t) => {
  await withImage(async ({ root, unit }) => {
    await mkdir(join(root, 'usr/lib/systemd/system'), { recursive: true });
    await writeFile(join(root, 'usr/lib/systemd/system/certunnel-agent.service'), FIXTURE_UNIT.replace('multi-user.target', 'multi-user.target network-online.target'));
    await flashImage({ root, bundle: fakeBundle(), unitSource: unit });
    await t.throwsAsync(access(join(root, 'etc/systemd/system/certunnel-agent.service')));
    for (const target of ['multi-user.target', 'network-online.target']) {
      t.is(await readlink(join(root, `etc/systemd/system/${target}.wants/certunnel-agent.service`)), '/usr/lib/systemd/system/certunnel-agent.service');
    }
    t.true((await verifyImage({ root, online: false })).ok);
  }, { mergedUsr: true });
});

test('ok/the unit\'s ExecStart decides where the config and the state directory go', async (t) => {
  await withImage(async ({ dir, root }) => {
    const custom = join(dir, 'custom.service');
    await writeFile(custom, FIXTURE_UNIT.replace('--config /etc/certunnel/agent.json', '--config "/opt/certunnel/agent.json" --state-dir=/data/certunnel'));
    await flashImage({ root, bundle: fakeBundle(), unitSource: custom });
    t.is((await lstat(join(root, 'opt/certunnel/agent.json'))).mode & 0o777, 0o644);
    t.is((await lstat(join(root, 'etc/certunnel/enroll-token'))).mode & 0o777, 0o600, 'where LoadCredential= reads it');
    t.true((await lstat(join(root, 'opt/certunnel/provisioning.json'))).isFile());
    t.is((await lstat(join(root, 'data/certunnel'))).mode & 0o777, 0o700);
    await t.throwsAsync(access(join(root, 'var/lib/certunnel')));
    t.true((await verifyImage({ root, online: false })).ok);
  });
});

test('security/absolute symlinks in the image are followed inside the root, never onto this machine', async (t) => {
  await withImage(async ({ root, unit }) => {
    const elsewhere = `/srv/certunnel-test-${process.pid}-${Date.now()}`;
    await mkdir(join(root, 'etc'), { recursive: true });
    await symlink(elsewhere, join(root, 'etc/certunnel'));
    await flashImage({ root, bundle: fakeBundle(), unitSource: unit });
    t.true((await lstat(join(root, elsewhere, 'agent.json'))).isFile());
    await t.throwsAsync(access(elsewhere), undefined, 'nothing written outside the root');
    t.is(await resolveInRoot(root, '/etc/../../../etc/certunnel/agent.json'), join(root, elsewhere, 'agent.json'), '.. stops at the root');
    await symlink('/loop', join(root, 'loop'));
    await t.throwsAsync(resolveInRoot(root, '/loop/x'), { code: 'PATH_ESCAPES_ROOT' });
  });
});

test('fail/flash refuses: an enrolled image, another bundle (unless --force), another serial, an expired token, a masked unit, no unit, no root', async (t) => {
  await withImage(async ({ dir, root, unit }) => {
    await t.throwsAsync(flashImage({ root: join(dir, 'nope'), bundle: fakeBundle(), unitSource: unit }), { code: 'IMAGE_INVALID' });
    await t.throwsAsync(flashImage({ root, bundle: fakeBundle(), unitSource: join(dir, 'missing.service') }), { code: 'UNIT_MISSING' });
    await t.throwsAsync(flashImage({ root, bundle: fakeBundle({ expiresAt: new Date(Date.now() - 1000).toISOString() }), unitSource: unit }), { code: 'BUNDLE_INVALID' });
    await t.throwsAsync(flashImage({ root, bundle: fakeBundle({ bindSerial: 'SN-1' }), unitSource: unit, expectSerial: 'SN-2' }), { code: 'SERIAL_MISMATCH' });
    await t.notThrowsAsync(flashImage({ root, bundle: fakeBundle({ bindSerial: 'SN-1' }), unitSource: unit, expectSerial: 'SN-1' }));

    const other: DeviceBundle = fakeBundle({ tokenId: 'tok_qqqqqqqqqqqqqqqq' });
    await t.throwsAsync(flashImage({ root, bundle: other, unitSource: unit }), { code: 'IMAGE_FLASHED' });
    await flashImage({ root, bundle: other, unitSource: unit, force: true });
    t.deepEqual(JSON.parse(await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8')), withoutToken(other));
    t.is(await readFile(join(root, 'etc/certunnel/enroll-token'), 'utf8'), `${tokenOf(other)}\n`);
    // Another bundle's token with the same config: still another bundle.
    await t.throwsAsync(flashImage({ root, bundle: { ...other, agent: { ...other.agent, enroll: { ...(other.agent.enroll as object), token: 'cte_another-token-0000' } } }, unitSource: unit }), { code: 'IMAGE_FLASHED' });

    await writeFile(join(root, 'var/lib/certunnel/state.json'), '{}');
    await t.throwsAsync(flashImage({ root, bundle: other, unitSource: unit, force: true }), { code: 'IMAGE_ENROLLED' });
    await rm(join(root, 'var/lib/certunnel/state.json'));

    await rm(join(root, 'etc/systemd/system/certunnel-agent.service'));
    await symlink('/dev/null', join(root, 'etc/systemd/system/certunnel-agent.service'));
    await t.throwsAsync(flashImage({ root, bundle: other, unitSource: unit }), { code: 'UNIT_INVALID' });
  });
});

test('fail/verify: each check fails when its condition is broken', async (t) => {
  const cases: Array<[string, string, (root: string) => Promise<unknown>, { now?: () => Date }?]> = [
    ['fail/token file readable by others', 'enroll-token', (root) => chmod(join(root, 'etc/certunnel/enroll-token'), 0o644)],
    ['fail/token file not root\'s', 'enroll-token', (root) => chown(join(root, 'etc/certunnel/enroll-token'), 999, 998)],
    ['fail/token file missing', 'enroll-token', (root) => rm(join(root, 'etc/certunnel/enroll-token'))],
    ['fail/token file empty', 'enroll-token', (root) => writeFile(join(root, 'etc/certunnel/enroll-token'), '')],
    ['fail/agent.json holds the token', 'agent-config', (root) => writeFile(join(root, 'etc/certunnel/agent.json'), JSON.stringify(fakeBundle().agent))],
    ['fail/agent.json not readable by the agent', 'agent-config', (root) => chmod(join(root, 'etc/certunnel/agent.json'), 0o600)],
    ['fail/agent.json owned by the agent user', 'agent-config', (root) => chown(join(root, 'etc/certunnel/agent.json'), 999, 998)],
    ['fail/agent.json invalid', 'agent-config', (root) => writeFile(join(root, 'etc/certunnel/agent.json'), '{"broker":{"url":"ftp://x"}}')],
    ['fail/not enabled', 'enabled', (root) => rm(join(root, 'etc/systemd/system/multi-user.target.wants/certunnel-agent.service'))],
    ['fail/state dir world-readable', 'state-dir', (root) => chmod(join(root, 'var/lib/certunnel'), 0o755)],
    ['fail/state dir owned by root', 'state-dir', (root) => chown(join(root, 'var/lib/certunnel'), 0, 0)],
    ['fail/already enrolled (a cloned identity)', 'state-dir', (root) => writeFile(join(root, 'var/lib/certunnel/device_key'), 'x')],
    ['fail/state dir missing', 'state-dir', (root) => rm(join(root, 'var/lib/certunnel'), { recursive: true })],
    ['fail/provisioning record missing', 'provisioning', (root) => rm(join(root, 'etc/certunnel/provisioning.json'))],
    ['fail/token expired', 'token-expiry', async () => undefined, { now: () => new Date(Date.now() + 2 * 86_400_000) }],
    ['fail/unit missing', 'unit', (root) => rm(join(root, 'etc/systemd/system/certunnel-agent.service'))],
  ];
  for (const [name, checkName, breakIt, opts] of cases) {
    await withImage(async ({ root, unit }) => {
      await flashImage({ root, bundle: fakeBundle(), unitSource: unit });
      t.true((await verifyImage({ root, online: false })).ok, `${name}: passes before`);
      await breakIt(root);
      const r = await verifyImage({ root, online: false, now: opts?.now });
      t.false(r.ok, name);
      t.is(check(r, checkName), 'fail', `${name}: ${JSON.stringify(r.checks)}`);
    });
  }
});

test('fail/verify stops where nothing further can be checked: no root directory, no unit', async (t) => {
  await withImage(async ({ dir, root, unit }) => {
    t.deepEqual((await verifyImage({ root: join(dir, 'nope'), online: false })).checks.map((c) => [c.name, c.status]), [['root', 'fail']]);
    await flashImage({ root, bundle: fakeBundle(), unitSource: unit });
    await rm(join(root, 'etc/systemd/system/certunnel-agent.service'));
    const r = await verifyImage({ root, online: false });
    t.false(r.ok);
    t.deepEqual(r.checks.map((c) => [c.name, c.status]), [['unit', 'fail']]);
  });
});

test('ok+fail/verify online: the pinned broker, its keys, the token status (fake API)', async (t) => {
  await withImage(async ({ root, unit }) => {
    const bundle = fakeBundle();
    await flashImage({ root, bundle, unitSource: unit });
    const ca: BrokerCaResponse = { ...bundle.broker, apiPin: bundle.broker.pin };
    const seen: ApiClientOptions[] = [];
    const api = (answer: (path: string) => unknown) => async <T>(options: ApiClientOptions, _m: string, path: string): Promise<T> => {
      seen.push(options);
      const value = answer(path);
      if (value instanceof Error) throw value;
      return value as T;
    };
    const tokens = (status: string) => ({ items: [{ id: bundle.tokenId, status }], nextCursor: null });

    const good = await verifyImage({ root, apiKey: 'ctk_test', api: api((p) => (p === '/v1/ca' ? ca : tokens('active'))) });
    t.true(good.ok, JSON.stringify(good.checks));
    t.is(check(good, 'broker'), 'ok');
    t.is(check(good, 'token-status'), 'ok');
    t.is(seen[0]!.pin, bundle.broker.pin ?? undefined, 'the flashed pin is what the connection checks');
    t.is(seen[0]!.apiKey, undefined, 'no key is sent for the public CA endpoint');

    const pin = await verifyImage({ root, api: api(() => new ApiError('PIN_MISMATCH', 'no')) });
    t.is(check(pin, 'broker'), 'fail');
    const rotated = await verifyImage({ root, api: api(() => ({ ...ca, hostCertificateAuthority: fakeBundle().broker.hostCertificateAuthority })) });
    t.is(check(rotated, 'broker'), 'warn', 'a rotated CA is noted: the agent takes the current one at enrollment');
    t.true(rotated.ok);
    const used = await verifyImage({ root, apiKey: 'ctk_test', api: api((p) => (p === '/v1/ca' ? ca : tokens('revoked'))) });
    t.is(check(used, 'token-status'), 'fail');
    t.false(used.ok);
  });
});

test('unit parsing: user, DynamicUser, quoting, WantedBy, refusals', (t) => {
  const unit = (service: string, install = 'WantedBy=multi-user.target'): string => `[Service]\n${service}\n[Install]\n${install}\n`;
  const u = parseAgentUnit(unit('User=agent\nGroup=agents\nExecStart=-/usr/bin/certunnel agent run \\\n  --config "/etc/my dir/agent.json"', 'WantedBy=multi-user.target\nWantedBy=graphical.target'));
  t.is(u.user, 'agent');
  t.is(u.group, 'agents');
  t.is(u.program, '/usr/bin/certunnel');
  t.is(u.configPath, '/etc/my dir/agent.json');
  t.deepEqual(u.wantedBy, ['multi-user.target', 'graphical.target']);
  t.is(parseAgentUnit(unit('User=root\nExecStart=/x agent run')).user, null);
  t.true(parseAgentUnit(unit('DynamicUser=yes\nExecStart=/x')).dynamicUser);
  t.deepEqual(parseAgentUnit(unit('ExecStart=/x', '')).wantedBy, ['multi-user.target']);
  t.is(parseAgentUnit(unit('ExecStart=/x')).configPath, '/etc/certunnel/agent.json');
  t.throws(() => parseAgentUnit(unit('User=a')), { code: 'UNIT_INVALID' });
  t.throws(() => parseAgentUnit(unit('ExecStart=certunnel agent run')), { code: 'UNIT_INVALID' });
  t.throws(() => parseAgentUnit(unit('ExecStart=/x --config ${CONFIG}')), { code: 'UNIT_INVALID' });
  t.is(parseAgentUnit(unit('ExecStart=/x')).tokenFile, null);
  t.deepEqual(parseAgentUnit(unit('ExecStart=/x --token-file %d/tok\nLoadCredential=tok:/etc/x/tok')).tokenFile, { path: '/etc/x/tok', credential: true });
  t.deepEqual(parseAgentUnit(unit('ExecStart=/x --token-file=/etc/x/tok')).tokenFile, { path: '/etc/x/tok', credential: false });
  t.throws(() => parseAgentUnit(unit('ExecStart=/x --token-file ${CREDENTIALS_DIRECTORY}/tok')), { code: 'UNIT_INVALID' }, 'no LoadCredential= for it');
  t.throws(() => parseAgentUnit(unit('ExecStart=/x --token-file ${TOKEN}')), { code: 'UNIT_INVALID' });
});

// Flashing as an ordinary user (as `npm run demo` may): files meant for root stay the user's,
// with a warning; giving a file to another user is refused.
const asNobody = process.getuid?.() === 0 ? test : test.skip;
asNobody('ok+fail/flash without root: the image may map the agent user to us; it may not ask for another uid', async (t) => {
  const { dir, cleanup } = await tempDir('certunnel-flash-');
  try {
    await chmod(dir, 0o755);
    const bundlePath = join(dir, 'bundle.json');
    await writeFile(bundlePath, JSON.stringify(fakeBundle()), { mode: 0o644 });
    const unitPath = join(dir, 'unit.service');
    await writeFile(unitPath, FIXTURE_UNIT, { mode: 0o644 });
    const flashAs = async (passwd: string) => {
      const root = join(dir, `root-${passwd.split(':')[2]}`);
      await mkdir(join(root, 'etc'), { recursive: true });
      await writeFile(join(root, 'etc/passwd'), passwd);
      await writeFile(join(root, 'etc/group'), 'certunnel:x:65534:\n');
      await chown(root, 65534, 65534);
      await chown(join(root, 'etc'), 65534, 65534);
      const result = await runCommand('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...cliArgs(['provision', 'flash', '--bundle', bundlePath, '--root', root, '--unit', unitPath])], { cwd: REPO_ROOT });
      return { root, result };
    };
    const mine = await flashAs('certunnel:x:65534:65534::/:/bin/false\n');
    t.is(mine.result.code, 0, mine.result.stderr);
    t.regex(mine.result.stderr, /not running as root/);
    const config = await lstat(join(mine.root, 'etc/certunnel/agent.json'));
    t.deepEqual([config.uid, config.mode & 0o777], [65534, 0o644]);
    const tokenFile = await lstat(join(mine.root, 'etc/certunnel/enroll-token'));
    t.deepEqual([tokenFile.uid, tokenFile.mode & 0o777], [65534, 0o600]);
    const other = await flashAs('certunnel:x:999:998::/:/bin/false\n');
    t.is(other.result.code, 1);
    t.regex(other.result.stderr, /IMAGE_INVALID: .* needs root/);
  } finally {
    await cleanup();
  }
});
