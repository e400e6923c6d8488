/**
 * The factory, end to end with the real CLI and the shipped systemd unit:
 * a batch of 100 → three images flashed and verified → three agents started
 * from those roots enroll and tunnel; a token works once; revoking the batch
 * makes the unused tokens fail, and leaves enrolled devices alone. One
 * story: each phase below starts from what the one before left.
 */
import test, { type ExecutionContext } from 'ava';
import { copyFile, lstat, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EXIT } from '../../agent/errors.js';
import { readManifest } from '../../provisioning/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { runCli } from '../../testkit/cli.js';
import { exchange, startDeviceService } from '../../testkit/gateway.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { bundleSecrets, makeImage, runAgentFromRoot, tempDir, type AgentProcess } from './helpers.js';

/** What the phases share: the broker, the provisioner's environment and the batch's output. */
interface Factory {
  readonly t: ExecutionContext;
  readonly b: TestBroker;
  readonly dir: string;
  readonly env: Record<string, string>;
  /** --api and --pin for the CLI. */
  readonly api: readonly string[];
  readonly out: string;
  readonly batchArgs: readonly string[];
}

type Device = { name: string; online: boolean; ports: { first: number; last: number } };

/** One flash station: flash bundle INDEX into ROOT, look at what it wrote, verify it online. */
async function flashAndVerify(f: Factory, root: string, index: number, secrets: readonly string[]): Promise<void> {
  const { t } = f;
  const flashed = await runCli(['provision', 'flash', '--bundle', join(f.out, `bundles/e2e-000${index}.json`), '--root', root]);
  t.is(flashed.code, 0, flashed.stderr);
  t.regex(flashed.stdout, new RegExp(`^flashed e2e #${index} \\(token tok_`));
  t.false(secrets.some((s) => flashed.stdout.includes(s) || flashed.stderr.includes(s)));
  // The token only in its own root 0600 file; agent.json (0644: the dynamic user reads it) holds none.
  const agentJson = await readFile(join(root, 'etc/certunnel/agent.json'), 'utf8');
  t.false(secrets.some((s) => agentJson.includes(s)), 'no token in agent.json');
  t.is((await lstat(join(root, 'etc/certunnel/agent.json'))).mode & 0o777, 0o644);
  const tokenFile = await lstat(join(root, 'etc/certunnel/enroll-token'));
  t.deepEqual([tokenFile.uid, tokenFile.gid, tokenFile.mode & 0o777], [0, 0, 0o600]);
  t.true(secrets.includes((await readFile(join(root, 'etc/certunnel/enroll-token'), 'utf8')).trim()));
  const verified = await runCli(['provision', 'verify', '--root', root], f.env);
  t.is(verified.code, 0, verified.stdout + verified.stderr);
  t.regex(verified.stdout, /^OK +broker +/m);
  t.regex(verified.stdout, /^OK +token-status +token tok_\w+ is active$/m);
}

/** A batch of 100 bundles, minted in one request; no token on the terminal. Returns the token secrets. */
async function mintBatch(f: Factory): Promise<string[]> {
  const { t } = f;
  const batch = await runCli(f.batchArgs, f.env);
  t.is(batch.code, 0, batch.stderr);
  t.regex(batch.stdout, /^batch e2e: 100 device\(s\) in .*, complete$/m);
  t.regex(batch.stdout, /minted now +100 \(one request\)/);
  const secrets = await bundleSecrets(f.out);
  t.is(secrets.length, 100);
  const printed = batch.stdout + batch.stderr;
  t.false(secrets.some((s) => printed.includes(s)), 'no token on the terminal');
  return secrets;
}

/** Three agents from three images enroll under their bound names and each http slot reaches the device service. */
async function startAgents(f: Factory, roots: readonly string[], agents: AgentProcess[]): Promise<Device[]> {
  const { t, b } = f;
  agents.push(...roots.map((root) => runAgentFromRoot(root)));
  for (const agent of agents) await agent.waitForEvent('connected');
  const devices = (await b.call<{ items: Device[] }>(b.admin, 'GET', '/v1/devices')).items;
  t.deepEqual(devices.map((d) => d.name).sort(), ['kiosk-0001', 'kiosk-0002', 'kiosk-0003'], 'each device enrolled under its bound name');
  await waitFor(async () => (await b.call<{ items: Array<{ online: boolean }> }>(b.admin, 'GET', '/v1/devices')).items.filter((d) => d.online).length === 3, 'three devices online');
  for (const d of devices) {
    t.is((await exchange(d.ports.first + 1, 'ping')).toString(), 'hello from the device\nping', `${d.name}'s http slot reaches the device service`);
  }
  return devices;
}

/** Revoke the batch: the 97 unused tokens fail (verify says so, an agent is refused); the enrolled devices keep their tunnels. */
async function revokeBatch(f: Factory, devices: readonly Device[]): Promise<void> {
  const { t } = f;
  const revoked = await runCli(['token', 'revoke', ...f.api, '--batch', 'e2e'], f.env);
  t.is(revoked.code, 0, revoked.stderr);
  t.is(revoked.stdout.trim(), 'revoked 97 token(s)');
  const late = await makeImage(f.dir, 'image-5', { user: 'certunnel-agent' });
  t.is((await runCli(['provision', 'flash', '--bundle', join(f.out, 'bundles/e2e-0004.json'), '--root', late])).code, 0);
  const verifyLate = await runCli(['provision', 'verify', '--root', late], f.env);
  t.is(verifyLate.code, 1);
  t.regex(verifyLate.stdout, /^FAIL +token-status +token tok_\w+ is revoked$/m);
  const refused = runAgentFromRoot(late);
  t.is(await refused.exited, EXIT.REFUSED, refused.output());
  t.is(refused.logs.find((l) => l.event === 'enroll_refused')?.code, 'TOKEN_REVOKED');
  for (const d of devices) t.is((await exchange(d.ports.first + 1, 'still')).toString(), 'hello from the device\nstill');
}

test('e2e/batch of 100 → flash 3 → 3 agents enroll and tunnel; a token works once; revoking the batch fails unused tokens', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-factory-');
    const service = await startDeviceService('hello from the device\n');
    const agents: AgentProcess[] = [];
    try {
      const provisioner = await b.apiKey('provisioner');
      const api = ['--api', b.broker.apiUrl, '--pin', b.init.apiPin];
      const out = join(dir, 'factory');
      const batchArgs = ['provision', 'batch', ...api, '--count', '100', '--batch', 'e2e', '--name-prefix', 'kiosk', '--service', `http=127.0.0.1:${service.port}`, '--out', out];
      const f: Factory = { t, b, dir, env: { CERTUNNEL_API_KEY: provisioner.apiKey! }, api, out, batchArgs };
      const secrets = await mintBatch(f);

      const roots = await Promise.all([1, 2, 3, 4].map((i) => makeImage(dir, `image-${i}`, { user: 'certunnel-agent' })));
      // Three flash stations at once.
      await Promise.all(roots.slice(0, 3).map((root, i) => flashAndVerify(f, root, i + 1, secrets)));
      const devices = await startAgents(f, roots.slice(0, 3), agents);

      // Enrolled, the token file emptied (the unit's SetCredential= default once it is deleted): the agent just runs.
      t.is(await agents[0]!.stop(), EXIT.OK);
      await writeFile(join(roots[0]!, 'etc/certunnel/enroll-token.used'), await readFile(join(roots[0]!, 'etc/certunnel/enroll-token')));
      await writeFile(join(roots[0]!, 'etc/certunnel/enroll-token'), '\n');
      agents[0] = runAgentFromRoot(roots[0]!);
      await agents[0].waitForEvent('connected');
      t.false(agents[0].logs.some((l) => l.event === 'enrolled' || l.event === 'enroll_refused'), 'no second enrollment');
      await writeFile(join(roots[0]!, 'etc/certunnel/enroll-token'), await readFile(join(roots[0]!, 'etc/certunnel/enroll-token.used')));

      // The same token a second time: a copy of image 1's config on another board.
      const clone = roots[3]!;
      await mkdir(join(clone, 'etc/certunnel'), { recursive: true });
      for (const file of ['agent.json', 'enroll-token']) await copyFile(join(roots[0]!, 'etc/certunnel', file), join(clone, 'etc/certunnel', file));
      const reused = runAgentFromRoot(clone);
      t.is(await reused.exited, EXIT.REFUSED, reused.output());
      t.is(reused.logs.find((l) => l.event === 'enroll_refused')?.code, 'TOKEN_USED');

      await revokeBatch(f, devices);

      // A re-run records what the broker now says, and mints nothing.
      const rerun = await runCli(batchArgs, f.env);
      t.is(rerun.code, 0, rerun.stderr);
      t.regex(rerun.stdout, /minted now +0\n/);
      const m = (await readManifest(out))!;
      t.deepEqual(m.devices.slice(0, 4).map((d) => d.tokenStatus), ['used', 'used', 'used', 'revoked']);
      t.is(m.devices.filter((d) => d.tokenStatus === 'revoked').length, 97);
      t.false(secrets.some((s) => b.logs.some((l) => l.includes(s))), 'no token in the broker logs');
      t.false(secrets.some((s) => agents.some((a) => a.output().includes(s))), 'no token in the agent logs');
      t.false((await readFile(join(out, 'manifest.json'), 'utf8')).includes('cte_'));
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
      await service.close();
      await cleanup();
    }
  });
});
