/**
 * Upgrade, the agents' side: devices keep running the agent they shipped
 * with while the broker is upgraded, and a device upgraded first keeps the
 * state directory its old agent made. For each release fixture
 * (RELEASE_FIXTURES: test/fixtures/v0.2.0, v0.3.0 and v0.4.0, see their READMEs):
 * a copy of the data directory that release's broker made is opened by the
 * current broker (the migrations run), and
 *
 *  (a) the release's agent (its sources vendored in agent-src/, run as they
 *      shipped) from the state directory it made renews its certificate
 *      against the new broker (a new serial) and its tunnel carries
 *      traffic; the revoked device's old agent stops with the revoked
 *      status;
 *  (b) the current agent, from a copy of that old state directory, does
 *      the same;
 *  (c) the release's agent enrolls a new device with the fixture's unused
 *      token and its tunnel comes up.
 *
 * Time: the broker runs on an injected clock and the agents (separate
 * processes) on testkit/shifted-clock.ts, both at the fixture's time + DUE, when
 * kiosk-1's one-hour certificate is past its renewal time (two thirds of
 * its life) but still valid, and the fixture's tokens (30 days) too.
 *
 * Ports: every fixture's pool is 127.0.0.1:20000-20099 and kiosk-1 holds
 * 20000-20001 (kiosk-3 gets 20004-20005); the devices keep their blocks
 * across an upgrade, so the pool stays and the tests run one at a time.
 */
import test, { type ExecutionContext } from 'ava';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { ApiClientOptions, ListTokensResponse, MintTokensResponse } from '../../api/index.js';
import { apiRequest } from '../../api/index.js';
import { EXIT } from '../../agent/errors.js';
import { createLogger, dataPaths, loadConfig, startBroker, type RunningBroker } from '../../broker/compose/index.js';
import { cliArgs } from '../../testkit/cli.js';
import { startDeviceService, type DeviceService } from '../../testkit/gateway.js';
import { isListening } from '../../testkit/net.js';
import { runCommand } from '../../testkit/openssh.js';
import { copyFixtureData, RELEASE_FIXTURES, restoreModes, type ReleaseFixture } from '../../testkit/release-fixture.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { answersWithin, spawnAgent, within, type AgentProcess } from '../agent/fixtures.js';

/** 50 minutes on: kiosk-1's certificate (3600 s, renewal at 2/3) is due for renewal and still valid. */
const DUE_MS = 50 * 60_000;
const SHIFTED_CLOCK = fileURLToPath(new URL('../../testkit/shifted-clock.ts', import.meta.url));
/** node's arguments to run the release's `certunnel`, with its wall clock moved (its code cannot take a clock). */
const oldAgentOf = (fixture: ReleaseFixture): string[] => ['--import', 'tsx', '--import', SHIFTED_CLOCK, join(fixture.dir, 'agent-src', 'cli', 'main.ts')];
const currentAgent = ['--import', 'tsx', '--import', SHIFTED_CLOCK, ...cliArgs([]).slice(2)];

interface Upgraded {
  readonly fixture: ReleaseFixture;
  readonly dir: string;
  readonly broker: RunningBroker;
  readonly anonymous: ApiClientOptions;
  readonly admin: ApiClientOptions;
  readonly provisioner: ApiClientOptions;
  /** For the agents' processes: their clock agrees with the broker's. */
  readonly env: NodeJS.ProcessEnv;
  readonly service: DeviceService;
}

async function withUpgradedBroker(t: ExecutionContext, fixture: ReleaseFixture, fn: (u: Upgraded) => Promise<void>): Promise<void> {
  t.timeout(240_000);
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-agent-upgrade-'));
  const data = join(dir, 'data');
  await copyFixtureData(fixture.dir, data);
  const keys = JSON.parse(await readFile(join(fixture.dir, 'keys.json'), 'utf8')) as { admin: string; provisioner: string };
  const offset = fixture.time + DUE_MS - Date.now();
  const logger = createLogger('warn', new Writable({ write: (_c, _e, cb) => cb() }));
  const broker = await startBroker({ config: await loadConfig({ dataDir: data }), logger, clock: () => new Date(Date.now() + offset) });
  const service = await startDeviceService('svc:');
  try {
    const anonymous = { baseUrl: broker.apiUrl, pin: (await readFile(dataPaths(data).apiPin, 'utf8')).trim() };
    await fn({
      fixture, dir, broker, anonymous, service,
      admin: { ...anonymous, apiKey: keys.admin },
      provisioner: { ...anonymous, apiKey: keys.provisioner },
      env: { CERTUNNEL_TEST_CLOCK_OFFSET_MS: String(offset) },
    });
  } finally {
    await service.close();
    await broker.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A copy of the agent state directory the release made for NAME. The fixture's
 * broker listened on ephemeral ports; a real broker keeps its address
 * across an upgrade, so the copy's broker URL and SSH port (state.json,
 * known_hosts) are pointed at where this one listens. Nothing else changes.
 */
async function oldStateDir(u: Upgraded, name: string): Promise<{ dir: string; serial: string }> {
  const dir = join(u.dir, `state-${name}`);
  await cp(join(u.fixture.dir, 'agent-state', name), dir, { recursive: true });
  await restoreModes(dir, (file) => file !== 'device_key');
  const statePath = join(dir, 'state.json');
  const state = JSON.parse(await readFile(statePath, 'utf8')) as { serial: string; broker: { url: string }; ssh: { port: number } };
  const oldSsh = state.ssh.port;
  state.broker.url = u.broker.apiUrl;
  state.ssh.port = u.broker.sshPort;
  await writeFile(statePath, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  const knownHosts = join(dir, 'known_hosts');
  const hosts = await readFile(knownHosts, 'utf8');
  await writeFile(knownHosts, hosts.replaceAll(`[127.0.0.1]:${oldSsh} `, `[127.0.0.1]:${u.broker.sshPort} `));
  return { dir, serial: state.serial };
}

/** An agent config (v0.2.0's schema, which v0.3.0's and the current agent still read) with its first service on the echo service. */
async function agentConfig(u: Upgraded, stateDir: string): Promise<string> {
  const path = join(u.dir, `agent-${Math.random().toString(36).slice(2)}.json`);
  await writeFile(path, JSON.stringify({
    broker: { url: u.broker.apiUrl, pin: u.anonymous.pin },
    stateDir,
    transport: 'ssh2',
    services: { ssh: `127.0.0.1:${u.service.port}`, http: false },
    keepalive: { intervalSeconds: 2, countMax: 2 },
    backoff: { baseMs: 200, capMs: 2000, minMs: 50 },
    renewBackoff: { baseMs: 500, capMs: 5000, minMs: 100 },
    connectTimeoutSeconds: 10,
    log: { level: 'debug' },
  }));
  return path;
}

const event = (name: string) => (line: Record<string, unknown>): boolean => line.event === name;

/** Waits until the agent of device NAME has renewed (a serial other than OLD_SERIAL), its tunnel with the new certificate carries traffic on PORT and the broker sees it online. */
async function renewsAndTunnels(t: ExecutionContext, u: Upgraded, agent: AgentProcess, name: string, oldSerial: string, port: number): Promise<string> {
  const renewed = await agent.waitForLog(event('renewed'), 'a renewal against the new broker', 90_000);
  const serial = String(renewed.serial);
  t.not(serial, oldSerial, 'a new certificate');
  t.true(BigInt(serial) > BigInt(oldSerial), 'serials go on from the old ones');
  await agent.waitForLog((l) => l.event === 'connected' && l.serial === serial, 'the tunnel up with the new certificate', 90_000, agent.logs.indexOf(renewed));
  await answersWithin(port, 'hello', 'svc:hello', 30_000);
  type Devices = { items: Array<{ name: string; online: boolean }> };
  const online = async (): Promise<boolean> => (await apiRequest<Devices>(u.admin, 'GET', '/v1/devices')).items.some((d) => d.name === name && d.online);
  await waitFor(online, `the broker to see ${name} online`, 30_000);
  return serial;
}

test.before(async () => {
  for (const port of [20000, 20001, 20004, 20005]) {
    if (await isListening(port)) throw new Error(`port ${port} of the release fixtures' pool is taken on this machine; these tests need it free`);
  }
});

for (const fixture of RELEASE_FIXTURES) {
  const { release } = fixture;
  const FIXTURE = fixture.dir;
  const oldAgent = oldAgentOf(fixture);

  test.serial(`${release} agent, ${release} state directory, new broker: renews (new serial), the tunnel carries traffic; the revoked device stops for good`, (t) =>
    withUpgradedBroker(t, fixture, async (u) => {
      const kiosk1 = await oldStateDir(u, 'kiosk-1');
      const agent = spawnAgent(['run', '--config', await agentConfig(u, kiosk1.dir)], u.env, oldAgent);
      try {
        const serial = await renewsAndTunnels(t, u, agent, 'kiosk-1', kiosk1.serial, 20000);
        const state = JSON.parse(await readFile(join(kiosk1.dir, 'state.json'), 'utf8')) as { serial: string; renewedAt: string | null };
        t.is(state.serial, serial, 'the old agent stored the new grant');
        t.truthy(state.renewedAt);
      } finally {
        await agent.stop();
      }
      t.false(await isListening(20000), 'the tunnel closed with the agent');

      const kiosk2 = await oldStateDir(u, 'kiosk-2');
      const revoked = spawnAgent(['run', '--config', await agentConfig(u, kiosk2.dir)], u.env, oldAgent);
      try {
        t.is(await within(revoked.exited, 90_000, -99), EXIT.REVOKED, revoked.output().slice(-3000));
        t.truthy(revoked.logs.find(event('revoked')), `${release} logs why it stopped`);
        t.false(await isListening(20002), 'no tunnel for the revoked device');
      } finally {
        await revoked.stop();
      }
    }));

  test.serial(`current agent, ${release} state directory, new broker: renews (new serial), the tunnel carries traffic`, (t) =>
    withUpgradedBroker(t, fixture, async (u) => {
      const kiosk1 = await oldStateDir(u, 'kiosk-1');
      const agent = spawnAgent(['run', '--config', await agentConfig(u, kiosk1.dir)], u.env, currentAgent);
      try {
        await renewsAndTunnels(t, u, agent, 'kiosk-1', kiosk1.serial, 20000);
      } finally {
        await agent.stop();
      }
      const status = await runCommand(process.execPath, [...currentAgent, 'agent', 'status', '--state-dir', kiosk1.dir, '--json'], { env: u.env });
      t.is(status.code, 0, status.stderr);
      t.is((JSON.parse(status.stdout) as { deviceId: string }).deviceId, JSON.parse(await readFile(join(kiosk1.dir, 'state.json'), 'utf8')).deviceId);
    }));

  test.serial(`${release} agent enrolls a new device with the fixture's unused token against the new broker; its tunnel comes up`, (t) =>
    withUpgradedBroker(t, fixture, async (u) => {
      const tokens = (await apiRequest<ListTokensResponse>(u.provisioner, 'GET', '/v1/tokens?batch=line-1')).items;
      const unused = tokens.filter((x) => x.status === 'active');
      t.is(unused.length, 1);
      const secrets = JSON.parse(await readFile(join(FIXTURE, 'tokens.json'), 'utf8')) as MintTokensResponse;
      const token = secrets.tokens.find((x) => x.id === unused[0]!.id)!.token;

      const stateDir = join(u.dir, 'state-kiosk-3');
      const config = await agentConfig(u, stateDir);
      const enrolled = await runCommand(process.execPath, [...oldAgent, 'agent', 'enroll', '--config', config, '--name', 'kiosk-3', '--json'], {
        env: { ...u.env, CERTUNNEL_ENROLL_TOKEN: token },
      });
      t.is(enrolled.code, 0, enrolled.stderr);
      const grant = JSON.parse(enrolled.stdout) as { name: string; ports: { first: number; last: number }; serial: string };
      t.is(grant.name, 'kiosk-3');
      t.deepEqual(grant.ports, { first: 20004, last: 20005 }, 'a fresh block; kiosk-2\'s stays quarantined');

      const agent = spawnAgent(['run', '--config', config], u.env, oldAgent);
      try {
        await agent.waitForLog((l) => l.event === 'connected' && BigInt(String(l.serial)) >= BigInt(grant.serial), 'the new device\'s tunnel up', 90_000);
        await answersWithin(20004, 'hello', 'svc:hello', 30_000);
      } finally {
        await agent.stop();
      }
      const again = await runCommand(process.execPath, [...oldAgent, 'agent', 'enroll', '--config', config, '--name', 'kiosk-4', '--force', '--json'], {
        env: { ...u.env, CERTUNNEL_ENROLL_TOKEN: token },
      });
      t.is(again.code, EXIT.REFUSED, `the used token is refused, with ${release}'s status for it`);
    }));
}
