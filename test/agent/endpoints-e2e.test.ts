/**
 * Several SSH endpoints, end to end with real processes: the `certunnel
 * agent` CLI enrolled with a broker whose ssh.endpoints names two SSH
 * servers on 127.0.0.1 — the broker's own (its embedded gateway, or a real
 * sshd in OpenSSH mode) and a second real gateway with the same host key
 * and user CA, as another node of a fleet. The node the agent is on is
 * stopped: the agent comes back on the other and the tunnel carries traffic
 * again. An endpoint dead from the start costs no backoff; a state
 * directory from before the list still works.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { renderKnownHosts, statePaths, type DeviceState } from '../../agent/state-dir.js';
import type { AgentStatusReport } from '../../agent/status.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { runCli } from '../../testkit/cli.js';
import { startDeviceService, type DeviceService, type GatewayEnv } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { agentConfig, answersWithin, mintToken, spawnAgent, type AgentProcess } from './fixtures.js';
import { freePool, freePort, startBrokerSshd, startPeerGateway, type BrokerSshd } from './net-fixtures.js';

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']);
});

interface Rig {
  readonly b: TestBroker;
  readonly pool: { first: number; last: number };
  readonly dir: string;
  readonly svc: DeviceService;
  /** The agent config file, enrolled. */
  readonly cfg: string;
  readonly stateDir: string;
  /** Stops the broker's own SSH server (its gateway, or sshd in OpenSSH mode) and every session on it. */
  stopBrokerSsh(): Promise<void>;
}

/** Enrolls a device through the CLI into DIR/state with an agent config for TRANSPORT. */
async function enroll(b: TestBroker, dir: string, transport: string, svc: DeviceService, http: DeviceService): Promise<{ cfg: string; stateDir: string }> {
  const stateDir = join(dir, 'state');
  const cfg = join(dir, 'agent.json');
  await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: b.broker.apiUrl, pin: b.init.apiPin }, stateDir, transport, svc, http)));
  const enrolled = await runCli(['agent', 'enroll', '--config', cfg, '--json'], { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) });
  if (enrolled.code !== 0) throw new Error(`enroll failed: ${enrolled.stderr}`);
  return { cfg, stateDir };
}

/** A broker (MODE) on SSHPORT whose ssh.endpoints are ENDPOINTS, a device service, an enrolled device; FN runs with them. */
async function withRig(
  mode: 'embedded' | 'openssh', transport: string, sshPort: number, endpoints: string[], fn: (r: Rig) => Promise<void>, certs: Record<string, unknown> = {},
): Promise<void> {
  const pool = await freePool(2);
  const ssh: Record<string, unknown> = { listen: `127.0.0.1:${sshPort}`, endpoints };
  if (mode === 'openssh') Object.assign(ssh, { mode: 'openssh', publicPort: sshPort, presencePollSeconds: 1 });
  await withBroker(async (b) => {
    let sshd: BrokerSshd | undefined;
    const svc = await startDeviceService('ssh:');
    const http = await startDeviceService('http:');
    try {
      if (mode === 'openssh') sshd = await startBrokerSshd(b.dir, sshPort, pool);
      await withTempDir(async (dir) => {
        const { cfg, stateDir } = await enroll(b, dir, transport, svc, http);
        const stopBrokerSsh = async (): Promise<void> => (sshd ? sshd.stop() : b.broker.ssh.close());
        await fn({ b, pool, dir, svc, cfg, stateDir, stopBrokerSsh });
      });
    } finally {
      await sshd?.stop();
      await svc.close();
      await http.close();
    }
  }, { config: { ports: { ...pool, perDevice: 2 }, ssh, certs } });
}

const connectedAt = (line: Record<string, unknown>): boolean => line.event === 'connected';

async function statusOf(cfg: string): Promise<AgentStatusReport> {
  const status = await runCli(['agent', 'status', '--config', cfg, '--json']);
  return JSON.parse(status.stdout) as AgentStatusReport;
}

const cases = [
  { mode: 'embedded', transport: 'ssh2' },
  { mode: 'embedded', transport: 'openssh' },
  { mode: 'openssh', transport: 'openssh' },
] as const;

for (const { mode, transport } of cases) {
  test(`${mode} broker + a second gateway, ${transport} transport: the node the agent is on stops; it comes back on the other and traffic flows`, async (t) => {
    const brokerPort = await freePort();
    const peerPort = await freePort();
    let peer: GatewayEnv | undefined;
    await withRig(mode, transport, brokerPort, [`127.0.0.1:${brokerPort}`, `127.0.0.1:${peerPort}`], async (r) => {
      peer = await startPeerGateway(r.b, peerPort);
      const state = JSON.parse(await readFile(statePaths(r.stateDir).state, 'utf8')) as DeviceState;
      t.deepEqual(state.sshEndpoints, [{ host: '127.0.0.1', port: brokerPort }, { host: '127.0.0.1', port: peerPort }]);
      t.is(state.ssh.port, brokerPort, 'ssh is the first endpoint');
      const agent: AgentProcess = spawnAgent(['run', '--config', r.cfg]);
      try {
        const first = await agent.waitForLog(connectedAt, 'tunnel up');
        const firstPort = Number(first.port);
        t.true([brokerPort, peerPort].includes(firstPort));
        await answersWithin(r.pool.first, 'one', 'ssh:one');
        t.is((await statusOf(r.cfg)).tunnel.endpoint, `127.0.0.1:${firstPort}`);

        // Stop the node the agent is on (its sessions end with it).
        const stopped = Date.now();
        await (firstPort === peerPort ? peer.close() : r.stopBrokerSsh());
        const otherPort = firstPort === brokerPort ? peerPort : brokerPort;
        const from = agent.logs.indexOf(first) + 1;
        const second = await agent.waitForLog((l) => connectedAt(l) && Number(l.port) === otherPort, 'connected on the other node', 30_000, from);
        await answersWithin(r.pool.first, 'two', 'ssh:two');
        t.log(`${mode}/${transport}: on ${firstPort === brokerPort ? 'the broker' : 'the peer'} first; back on the other and carrying traffic ${Date.now() - stopped} ms after it stopped`);
        const lost = agent.logs.slice(from).find((l) => l.event === 'tunnel_lost');
        t.is(lost?.endpoint, `127.0.0.1:${firstPort}`);
        const between = agent.logs.slice(agent.logs.indexOf(lost!), agent.logs.indexOf(second));
        t.false(between.some((l) => l.event === 'backoff'), 'the other endpoint was dialled at once, without a backoff');
        t.is((await statusOf(r.cfg)).tunnel.endpoint, `127.0.0.1:${otherPort}`);
      } finally {
        await agent.stop();
        await peer?.close();
      }
    });
  });
}

for (const transport of ['ssh2', 'openssh'] as const) {
  test(`embedded broker, ${transport} transport: endpoints dead from the start cost no backoff; the agent connects on the live one`, async (t) => {
    const brokerPort = await freePort();
    const dead: [number, number] = [await freePort(), await freePort()];
    await withRig('embedded', transport, brokerPort, [`127.0.0.1:${dead[0]}`, `127.0.0.1:${brokerPort}`, `127.0.0.1:${dead[1]}`], async (r) => {
      const state = JSON.parse(await readFile(statePaths(r.stateDir).state, 'utf8')) as DeviceState;
      t.is(state.ssh.port, dead[0], 'the first endpoint, the one older agents dial, is dead');
      // Each run draws its own order: three runs make it very likely that a dead endpoint comes first at least once.
      let deadTried = 0;
      for (let run = 0; run < 3; run++) {
        const agent = spawnAgent(['run', '--config', r.cfg]);
        try {
          const up = await agent.waitForLog(connectedAt, 'tunnel up', 30_000);
          t.is(Number(up.port), brokerPort);
          await answersWithin(r.pool.first, `run${run}`, `ssh:run${run}`);
          const before = agent.logs.slice(0, agent.logs.indexOf(up));
          t.false(before.some((l) => l.event === 'backoff'), 'no backoff while a live endpoint was left to try');
          const failed = before.filter((l) => l.event === 'connect_failed');
          t.true(failed.every((l) => l.code === 'UNREACHABLE' && dead.some((p) => l.endpoint === `127.0.0.1:${p}`)), JSON.stringify(failed));
          deadTried += failed.length;
        } finally {
          await agent.stop();
        }
      }
      t.log(`${transport}: ${deadTried} dead endpoints dialled before the live one in 3 runs`);
    });
  });
}

test('embedded broker: a state directory from before the list (older agent) keeps its one endpoint; the next renewal adds the list', async (t) => {
  const brokerPort = await freePort();
  const otherPort = await freePort();
  await withRig('embedded', 'ssh2', brokerPort, [`127.0.0.1:${brokerPort}`, `127.0.0.1:${otherPort}`], async (r) => {
    // What an agent before 0.4 wrote: no sshEndpoints, known_hosts for the ssh endpoint alone.
    const paths = statePaths(r.stateDir);
    const { sshEndpoints, ...old } = JSON.parse(await readFile(paths.state, 'utf8')) as DeviceState;
    t.is(sshEndpoints?.length, 2);
    await writeFile(paths.state, `${JSON.stringify(old, null, 2)}\n`);
    await writeFile(paths.knownHosts, renderKnownHosts(old.ssh));
    const before = await statusOf(r.cfg);
    t.deepEqual(before.broker?.sshEndpoints, [`127.0.0.1:${brokerPort}`]);
    const agent = spawnAgent(['run', '--config', r.cfg]);
    try {
      const up = await agent.waitForLog(connectedAt, 'tunnel up');
      t.is(Number(up.port), brokerPort);
      await answersWithin(r.pool.first, 'old', 'ssh:old');
      await agent.waitForLog((l) => l.event === 'renewed', 'renewal', 30_000, agent.logs.indexOf(up));
      const renewed = JSON.parse(await readFile(paths.state, 'utf8')) as DeviceState;
      t.deepEqual(renewed.sshEndpoints, [{ host: '127.0.0.1', port: brokerPort }, { host: '127.0.0.1', port: otherPort }]);
      t.regex(await readFile(paths.knownHosts, 'utf8'), new RegExp(`\\[127\\.0\\.0\\.1\\]:${otherPort} `));
      await answersWithin(r.pool.first, 'renewed', 'ssh:renewed');
    } finally {
      await agent.stop();
    }
  }, { deviceValiditySeconds: 60, renewAtFraction: 0.1 });
});
