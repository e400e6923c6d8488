import test from 'ava';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, encodePrivateKey } from '../../ca/index.js';
import { apiRequest, type DeviceView, type EnrollResponse, type MintTokensResponse } from '../../api/index.js';
import { readEphemeralRange } from '../../broker/compose/ephemeral-ports.js';
import { spawn } from 'node:child_process';
import { cliArgs, runCli, spawnBroker, REPO_ROOT } from '../../testkit/cli.js';
import { runCommand, withTempDir } from '../../testkit/openssh.js';

const INIT = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '21000-21999'];

test('ok/init, serve, operate over the CLI, renew with the shell script, revoke, SIGTERM', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, ...INIT]);
    t.is(init.code, 0, init.stderr);
    t.notRegex(init.stderr, /ephemeral/, 'a pool below the ephemeral range draws no warning');
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)?.[1];
    t.truthy(adminKey);
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    for (const f of ['ca/user_ca', 'ca/host_ca', 'ssh/host_key', 'tls/api.key', 'config.json']) {
      t.is((await stat(join(data, f))).mode & 0o777, 0o600, f);
    }
    // A second init refuses and changes nothing.
    const before = await readdir(data, { recursive: true });
    const again = await runCli(['init', '--data', data, ...INIT]);
    t.is(again.code, 1);
    t.regex(again.stderr, /DATA_DIR_EXISTS/);
    t.deepEqual(await readdir(data, { recursive: true }), before);

    const broker = await spawnBroker(['--data', data, '--log-level', 'warn']);
    try {
      const env = { CERTUNNEL_API_KEY: adminKey! };
      const minted = await runCli(['token', 'create', '--data', data, '--count', '2', '--batch', 'cli-batch', '--json'], env);
      t.is(minted.code, 0, minted.stderr);
      const tokens = (JSON.parse(minted.stdout) as MintTokensResponse).tokens.map((x) => x.token);
      t.is(tokens.length, 2);

      const key = generateKeyPair();
      const grant = await apiRequest<EnrollResponse>({ baseUrl: broker.apiUrl, pin }, 'POST', '/v1/enroll', { token: tokens[0], publicKey: formatPublicKey(key.publicKey), name: 'kiosk-7' });

      const list = await runCli(['device', 'list', '--data', data], env);
      t.is(list.code, 0, list.stderr);
      t.regex(list.stdout, /kiosk-7\s+active\s+21000-21001/);
      const show = await runCli(['device', 'show', 'kiosk-7', '--data', data, '--json'], env);
      t.is((JSON.parse(show.stdout) as DeviceView).id, grant.deviceId);

      // The POSIX shell agent renews with ssh-keygen -Y sign and curl.
      const keyPath = join(dir, 'device_key');
      await writeFile(keyPath, encodePrivateKey(key), { mode: 0o600 });
      const script = join(REPO_ROOT, 'agent', 'certunnel-renew.sh');
      const renew = await runCommand('sh', [script, '--url', broker.apiUrl, '--pin', pin, '--device-id', grant.deviceId, '--key', keyPath]);
      t.is(renew.code, 0, renew.stderr);
      const cert = await readFile(`${keyPath}-cert.pub`, 'utf8');
      const listed = await runCommand('ssh-keygen', ['-L', '-f', `${keyPath}-cert.pub`]);
      t.regex(listed.stdout, /ports-21000-21001/);
      t.not(cert.trim(), grant.certificate);
      // A wrong pin: curl refuses before sending anything.
      const spoofed = await runCommand('sh', [script, '--url', broker.apiUrl, '--pin', 'sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '--device-id', grant.deviceId, '--key', keyPath]);
      t.is(spoofed.code, 4);

      const revoke = await runCli(['device', 'revoke', 'kiosk-7', '--reason', 'lost', '--data', data], env);
      t.is(revoke.code, 0, revoke.stderr);
      t.regex(revoke.stdout, /revoked dev_/);
      const refused = await runCommand('sh', [script, '--url', broker.apiUrl, '--pin', pin, '--device-id', grant.deviceId, '--key', keyPath]);
      t.is(refused.code, 3);
      t.regex(refused.stderr, /DEVICE_REVOKED/);

      const revokeBatch = await runCli(['token', 'revoke', '--batch', 'cli-batch', '--data', data], env);
      t.regex(revokeBatch.stdout, /revoked 1 token/);
      const audit = await runCli(['audit', '--data', data, '--action', 'device.revoke'], env);
      t.regex(audit.stdout, /device\.revoke\s+dev_\S+\s+ok/);
      const noKey = await runCli(['device', 'list', '--data', data]);
      t.is(noKey.code, 1);
      t.regex(noKey.stderr, /UNAUTHENTICATED/);
    } finally {
      t.is(await broker.stop('SIGTERM'), 0, 'the broker exits cleanly on SIGTERM');
    }
  });
});

test('fail/invalid config is refused with the field named', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    t.is((await runCli(['init', '--data', data, ...INIT])).code, 0);
    const configPath = join(data, 'config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, Record<string, unknown>>;
    config.ports!.perDevice = 'two';
    await writeFile(configPath, JSON.stringify(config));
    const run = await runCli(['broker', '--data', data]);
    t.is(run.code, 1);
    t.regex(run.stderr, /CONFIG_INVALID: config field ports\.perDevice/);
    const badInit = await runCli(['init', '--data', join(dir, 'other'), '--port-range', '30000-1']);
    t.regex(badInit.stderr, /CONFIG_INVALID|BAD_ARGUMENT/);
  });
});

const TRUST_CASES: Array<[string, string[], Record<string, unknown>]> = [
  ['ok/init (HTTPS): no proxy settings written', [], {}],
  ['ok/init --insecure-http: X-Forwarded-For is not believed unless asked for', ['--insecure-http'], { insecureHttp: true, trustProxy: false }],
  ['ok/init --insecure-http --trust-proxy: both written', ['--insecure-http', '--trust-proxy'], { insecureHttp: true, trustProxy: true }],
  ['ok/init --trust-proxy (HTTPS behind a balancer)', ['--trust-proxy'], { trustProxy: true }],
];

for (const [title, flags, expected] of TRUST_CASES) {
  test(title, async (t) => {
    await withTempDir(async (dir) => {
      const data = join(dir, 'data');
      const init = await runCli(['init', '--data', data, ...INIT, ...flags]);
      t.is(init.code, 0, init.stderr);
      const api = (JSON.parse(await readFile(join(data, 'config.json'), 'utf8')) as { api: Record<string, unknown> }).api;
      t.deepEqual({ insecureHttp: api.insecureHttp, trustProxy: api.trustProxy }, { insecureHttp: undefined, trustProxy: undefined, ...expected });
    });
  });
}

test('ok/init warns (and still initialises) when the pool overlaps the kernel ephemeral range', async (t) => {
  const range = readEphemeralRange();
  if (!range) return t.pass('no /proc/sys/net/ipv4/ip_local_port_range here');
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', `${range.first}-${range.first + 99}`]);
    t.is(init.code, 0, init.stderr);
    t.regex(init.stderr, new RegExp(`warning: the port pool ${range.first}-${range.first + 99} overlaps the kernel's ephemeral ports`));
    t.truthy((await stat(join(data, 'config.json'))).size);
  });
});

test('ok/start takes init options on its first run, says what to do next, then serves', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const child = spawn(process.execPath, cliArgs(['start', '--data', data, '--domain', 'fleet.example', ...INIT, '--log-level', 'warn']), { cwd: REPO_ROOT });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    try {
      const deadline = Date.now() + 60_000;
      while (!out.includes('{"ready":true') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 200));
      t.regex(out, /\{"ready":true/);
      t.regex(out, /Next: the broker starts now/);
      t.is((JSON.parse(await readFile(join(data, 'config.json'), 'utf8')) as { domain: string }).domain, 'fleet.example');
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
