/**
 * The cluster end to end, as issue #13 asks for its proof, every part a
 * real process: PostgreSQL, three `certunnel broker` nodes (2 and 3 made
 * by `certunnel join`), devices enrolled through node 1 by `certunnel agent
 * enroll` and run by `certunnel agent` (each picks one of the nodes' SSH
 * endpoints at random; agents are added one at a time until every node
 * holds a tunnel), each device with its own sshd and web page. An operator
 * reaches each device through a node it is not on, by `certunnel ssh` and
 * through the HTTP proxy; a device revoked through a third node loses its
 * tunnel, its agent is told, and every node refuses it; a node holding a
 * live device is killed (-9): its agents come back on the others, it is
 * listed down with its presence cleared, a device that has not come back is
 * DEVICE_OFFLINE (not a hang), and nothing committed before the kill is
 * lost. Needs root (sshd) and PostgreSQL. Waits are generous polls, never
 * timing assertions.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { statePaths, type DeviceState } from '../../agent/state-dir.js';
import { apiRequest, type ApiClientOptions, type AuditEventView, type CaResponse, type DeviceView, type ListNodesResponse, type MintTokensResponse } from '../../api/index.js';
import { parsePublicKey } from '../../ca/index.js';
import { apiErrorCode } from '../../testkit/api-error.js';
import { runCli } from '../../testkit/cli.js';
import { startTestCluster, type TestCluster } from '../../testkit/cluster.js';
import { nodeApi, proxyGet } from '../../testkit/cluster-device.js';
import { freePortBlock } from '../../testkit/gateway.js';
import { isListening } from '../../testkit/net.js';
import { makeOpensshKey, withTempDir } from '../../testkit/openssh.js';
import { spawnSsh, sshArgs, waitFor, writeKnownHosts } from '../../testkit/ssh-client.js';
import { startSshd, type RunningSshd } from '../../testkit/sshd.js';
import { agentConfig, spawnAgent, within, type AgentProcess } from '../agent/fixtures.js';

const CAN_RUN = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/sbin/sshd');
const sshdTest = CAN_RUN ? test : test.skip;
const DOMAIN = 'cluster.test';
const ENV = { CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS: '1', CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS: '3', CERTUNNEL_CLUSTER_INTERNAL_LISTEN: '127.0.0.1:0' };
/** Agents started at most while waiting for every node to hold one (3 nodes, random picks: 5.5 on average). */
const MAX_AGENTS = 12;
const WAIT = 90_000;

interface Device {
  readonly name: string;
  readonly id: string;
  readonly port: number;
  readonly stateDir: string;
  readonly agent: AgentProcess;
  readonly sshd: RunningSshd;
}

async function nodeOf(api: ApiClientOptions, id: string): Promise<string | undefined> {
  const view = await apiRequest<DeviceView>(api, 'GET', `/v1/devices/${id}`);
  return view.online ? view.node : undefined;
}

/** Every row of a paged list endpoint (PATH with its query, without limit/cursor). */
async function listAll<T>(api: ApiClientOptions, path: string): Promise<T[]> {
  const all: T[] = [];
  let cursor: string | null = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page: { items: T[]; nextCursor: string | null } = await apiRequest(api, 'GET', `${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    all.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return all;
}

/** The proxy's answer for NAME through the node on APIPORT, or a marker when none comes within 30 s (a hang). */
function proxied(c: TestCluster, apiPort: number, name: string, path: string): Promise<{ status: number; body: string }> {
  return within(proxyGet(apiPort, `${name}.${DOMAIN}`, c.adminKey, path), 30_000, { status: -1, body: 'no answer within 30 s' });
}

sshdTest('three nodes: devices on each reached through another (ssh, HTTP), revoked through a third, a killed node\'s devices back on the others, nothing lost', async (t) => {
  t.timeout(600_000); // three brokers, up to a dozen agents and sshds, each a process, on a loaded 2-core box
  await withTempDir(async (dir) => {
    const started = Date.now();
    const pool = await freePortBlock(2 * MAX_AGENTS + 8);
    const cluster = await startTestCluster({ nodes: 3, dir, initArgs: ['--port-range', `${pool.first}-${pool.last}`, '--domain', DOMAIN], env: ENV });
    const devices: Device[] = [];
    const cleanups: Array<() => Promise<unknown>> = [];
    try {
      const brokers = cluster.nodes.map((n) => n.broker);
      const api = (i: number) => nodeApi(cluster, i);
      const ids = await Promise.all(cluster.nodes.map(async (n) => (JSON.parse(await readFile(join(n.dataDir, 'node.json'), 'utf8')) as { id: string }).id));
      t.deepEqual((await apiRequest<ListNodesResponse>(api(0), 'GET', '/v1/nodes')).items.map((n) => n.id).sort(), [...ids].sort());
      // Node 1 names the nodes up at its last heartbeat: once it has seen all three, every enrollment gets them.
      const sshPorts = brokers.map((b) => b.sshPort).sort();
      await waitFor(async () => JSON.stringify((await apiRequest<CaResponse>(api(0), 'GET', '/v1/ca')).sshEndpoints?.map((e) => e.port).sort()) === JSON.stringify(sshPorts), 'node 1 naming the three SSH endpoints', WAIT);

      // The operator's login key, let in by every device's sshd.
      const login = await makeOpensshKey(dir, 'operator-login');
      const authorizedKeys = join(dir, 'authorized_keys');
      await writeFile(authorizedKeys, `${login.publicKeyLine}\n`);
      const deviceKnownHosts = join(dir, 'device_known_hosts');
      await writeFile(deviceKnownHosts, '');

      // 1. Devices enrolled through node 1, one agent at a time, until every node holds a tunnel.
      const held = new Map<string, Device[]>(ids.map((id) => [id, []]));
      for (let k = 0; k < MAX_AGENTS && [...held.values()].some((d) => d.length === 0); k++) {
        const name = `kiosk-${k}`;
        const sshd = await startSshd({ config: [`AuthorizedKeysFile ${authorizedKeys}`, 'PermitRootLogin prohibit-password'] });
        cleanups.push(() => sshd.stop());
        const web = createServer((req, res) => res.end(`${name} page ${req.url}`));
        await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
        cleanups.push(() => new Promise((r) => {
          web.close(r);
          web.closeAllConnections();
        }));
        const hostKey = (await readFile(`${sshd.hostKeyPath}.pub`, 'utf8')).trim().split(' ').slice(0, 2).join(' ');
        await writeFile(deviceKnownHosts, `${name} ${hostKey}\n`, { flag: 'a' });
        const stateDir = join(dir, name);
        const cfg = join(dir, `${name}.json`);
        await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: brokers[0]!.apiUrl, pin: cluster.pin }, stateDir, 'ssh2', sshd, { port: (web.address() as AddressInfo).port })));
        const minted = await apiRequest<MintTokensResponse>(api(0), 'POST', '/v1/tokens', { count: 1 });
        const enrolled = await runCli(['agent', 'enroll', '--config', cfg, '--name', name, '--json'], { CERTUNNEL_ENROLL_TOKEN: minted.tokens[0]!.token });
        t.is(enrolled.code, 0, enrolled.stderr);
        const state = JSON.parse(await readFile(statePaths(stateDir).state, 'utf8')) as DeviceState;
        t.deepEqual(state.sshEndpoints?.map((e) => e.port).sort(), sshPorts, 'every node\'s SSH endpoint in the enrollment answer');
        const agent = spawnAgent(['run', '--config', cfg]);
        cleanups.push(async () => {
          agent.child.kill('SIGCONT');
          await agent.stop();
        });
        const device: Device = { name, id: state.deviceId, port: state.ports.first, stateDir, agent, sshd };
        devices.push(device);
        await agent.waitForLog((l) => l.event === 'connected', `${name}'s tunnel`, WAIT);
        let node: string | undefined;
        await waitFor(async () => (node = await nodeOf(api(0), device.id)) !== undefined, `${name} online`, WAIT);
        held.get(node!)!.push(device);
      }
      t.log(`${devices.length} agents to cover the three nodes: ${ids.map((id, i) => `node ${i + 1} holds ${held.get(id)!.map((d) => d.name).join(', ')}`).join('; ')}`);
      const first = ids.map((id) => held.get(id)![0]!);
      t.true(first.every(Boolean), 'every node holds a tunnel');
      if (!first.every(Boolean)) return;

      // 2. The device on node i through node i+1: certunnel ssh, then the HTTP proxy.
      const opEnv = { CERTUNNEL_API_KEY: cluster.adminKey, CERTUNNEL_HOME: join(dir, 'operator-home') };
      const deviceLogin = ['-F', '/dev/null', '-i', login.path, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${deviceKnownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-l', 'root'];
      for (const [i, d] of first.entries()) {
        const via = (i + 1) % 3;
        const ssh = await runCli(['ssh', d.name, '--api', brokers[via]!.apiUrl, '--pin', cluster.pin, '--', ...deviceLogin, 'echo', `${d.name} via node ${via + 1}`], opEnv);
        t.is(ssh.code, 0, ssh.stderr);
        t.is(ssh.stdout, `${d.name} via node ${via + 1}\n`);
        const page = await proxied(cluster, brokers[via]!.apiPort, d.name, `/via-${via + 1}`);
        t.is(page.status, 200, page.body);
        t.is(page.body, `${d.name} page /via-${via + 1}`);
      }

      // 3. Node 2's device revoked through node 3.
      const revoked = first[1]!;
      await apiRequest(api(2), 'POST', `/v1/devices/${revoked.id}/revoke`, { reason: 'cluster e2e' });
      await waitFor(async () => !(await isListening(revoked.port)), `${revoked.name}'s port closed on node 2`, WAIT);
      await waitFor(async () => (await nodeOf(api(1), revoked.id)) === undefined, `${revoked.name} offline`, WAIT);
      const told = await revoked.agent.waitForLog((l) => l.event === 'revoked', `${revoked.name}'s agent told it is revoked`, WAIT);
      t.is(told.code, 'DEVICE_REVOKED');
      t.not(await within(revoked.agent.exited, WAIT, null), null, 'the revoked agent stops');
      const hostKey = parsePublicKey((JSON.parse(await readFile(statePaths(revoked.stateDir).state, 'utf8')) as DeviceState).ssh.hostKey);
      const paths = statePaths(revoked.stateDir);
      for (const [i, b] of brokers.entries()) {
        t.is(await apiErrorCode(apiRequest(api(i), 'POST', `/v1/devices/${revoked.id}/operator-certificate`, { publicKey: login.publicKeyLine })), 'DEVICE_REVOKED', `node ${i + 1}`);
        const page = await proxied(cluster, b.apiPort, revoked.name, '/');
        t.not(page.status, 200, `node ${i + 1}'s proxy`);
        t.regex(page.body, /DEVICE_REVOKED/);
        // The device's own key and certificate, dialled by hand: refused.
        const knownHosts = await writeKnownHosts(join(dir, `revoked_known_hosts.${i}`), '127.0.0.1', b.sshPort, hostKey);
        const dial = spawnSsh([
          ...sshArgs({ port: b.sshPort, knownHosts, identity: { keyPath: paths.key, certPath: paths.certificate } }),
          '-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:${revoked.port}:127.0.0.1:${revoked.sshd.port}`,
        ]);
        const code = await within(dial.exited, WAIT, null);
        await dial.stop();
        t.not(code, null, `node ${i + 1} lets the revoked device's ssh in`);
        t.not(code, 0);
        t.false(await isListening(revoked.port));
      }

      // 4. Node 3 killed (-9), with its device's agent frozen first so that one is still away when the operator asks.
      const victim = 2;
      const survivor = api(0);
      const before = {
        devices: Object.fromEntries((await listAll<DeviceView>(survivor, '/v1/devices')).map((d) => [d.id, d.status])),
        audit: (await listAll<AuditEventView>(survivor, '/v1/audit')).map((e) => e.id),
      };
      const onVictim = held.get(ids[victim]!)!;
      const frozen = onVictim[0]!;
      frozen.agent.child.kill('SIGSTOP');
      await cluster.nodes[victim]!.broker.stop('SIGKILL');
      try {
        for (const i of [0, 1]) {
          const page = await proxied(cluster, brokers[i]!.apiPort, frozen.name, '/');
          t.is(page.status, 502, `node ${i + 1}: ${page.body}`);
          t.regex(page.body, /DEVICE_OFFLINE/);
        }
        await waitFor(async () => (await apiRequest<ListNodesResponse>(survivor, 'GET', '/v1/nodes')).items.find((n) => n.id === ids[victim])?.status === 'down', 'node 3 down', WAIT);
        await waitFor(async () => (await nodeOf(survivor, frozen.id)) === undefined, `${frozen.name}'s presence cleared`, WAIT);
        t.is(await apiErrorCode(apiRequest(api(1), 'POST', `/v1/devices/${frozen.name}/operator-certificate`, { publicKey: login.publicKeyLine })), 'DEVICE_OFFLINE');
      } finally {
        frozen.agent.child.kill('SIGCONT');
      }
      for (const d of onVictim) {
        await waitFor(async () => [ids[0], ids[1]].includes(await nodeOf(survivor, d.id)), `${d.name} back on node 1 or 2`, WAIT);
        await waitFor(async () => (await proxied(cluster, brokers[0]!.apiPort, d.name, '/back')).body === `${d.name} page /back`, `${d.name}'s page through node 1 again`, WAIT);
      }
      t.log(`node 3 killed; ${onVictim.map((d) => d.name).join(', ')} back on ${(await Promise.all(onVictim.map((d) => nodeOf(survivor, d.id)))).map((n) => `node ${ids.indexOf(n!) + 1}`).join(', ')}`);

      // Nothing lost: every device (with its status) and every audit row from before the kill, read through node 2.
      const after = {
        devices: Object.fromEntries((await listAll<DeviceView>(api(1), '/v1/devices')).map((d) => [d.id, d.status])),
        audit: new Set((await listAll<AuditEventView>(api(1), '/v1/audit')).map((e) => e.id)),
      };
      t.deepEqual(after.devices, before.devices);
      t.is(Object.keys(before.devices).length, devices.length);
      t.is(before.devices[revoked.id], 'revoked');
      t.deepEqual(before.audit.filter((id) => !after.audit.has(id)), [], 'audit rows from before the kill');
      const actions = new Map<string, number>();
      for (const e of await listAll<AuditEventView>(api(1), '/v1/audit')) actions.set(e.action, (actions.get(e.action) ?? 0) + 1);
      t.is(actions.get('device.enroll'), devices.length);
      t.is(actions.get('device.revoke'), 1);
      t.log(`${before.audit.length} audit rows before the kill, all there after; ${Math.round((Date.now() - started) / 1000)} s from the cluster's start`);
    } finally {
      await Promise.all(cleanups.map((c) => c().catch(() => undefined)));
      await cluster.stop();
    }
  });
});
