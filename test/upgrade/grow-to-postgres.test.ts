/**
 * Proof of issue #16: a fleet enrolled on SQLite moves to PostgreSQL and a
 * second node without re-enrolling or re-flashing a device. All real
 * processes: `certunnel broker`, `certunnel store migrate`, the Node agent
 * (ssh2 and openssh transports), the shell agent (agent/certunnel-agent.sh),
 * a throwaway PostgreSQL.
 *
 * The devices dial one stable address, as a fleet's devices dial a DNS name:
 * here a TCP forwarder (the load balancer of docs/cluster.md) in front of
 * node 1's API and SSH ports, switched to node 2 later. The broker tells
 * devices that address (api.publicUrl, ssh.publicPort).
 *
 * 1. On SQLite: a batch of 6 tokens, 4 redeemed (ssh2, openssh and shell
 *    agents, one more device that is then revoked), 2 unused; the three
 *    agents tunnel.
 * 2. Node 1 stopped (SIGTERM), `store migrate`, node 1 started again on
 *    PostgreSQL, same ports: the same agent processes (never restarted,
 *    same state directories) renew through it (serials in PostgreSQL) and
 *    carry traffic.
 * 3. A second node made after the migration (`certunnel node token` on
 *    node 1, `certunnel join`: testkit/cluster.ts joinNode); node 1 stopped and the
 *    forwarder switched: the agents come back through node 2, renew and
 *    carry traffic.
 * 4. The revoked device's agent is refused (exit 10), an unused token of
 *    the half-used batch enrolls, a used one does not, and the audit trail
 *    holds every row of the SQLite file, same ids, plus the migration's.
 *
 * Certificates live 60 s and renew at a tenth of that, so each agent renews
 * every few seconds on whichever broker it reaches.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiRequest, type ApiClientOptions, type AuditEventView, type MintTokensResponse } from '../../api/index.js';
import { EXIT } from '../../agent/errors.js';
import { openStore } from '../../broker/store/index.js';
import { REPO_ROOT, runCli, spawnBroker, type BrokerProcess } from '../../testkit/cli.js';
import { joinNode } from '../../testkit/cluster.js';
import { startDeviceService, type DeviceService } from '../../testkit/gateway.js';
import { runCommand } from '../../testkit/openssh.js';
import { createTestDatabase, startPostgres } from '../../testkit/postgres.js';
import { agentConfig, answersWithin, spawnAgent, spawnShellAgent, within, type AgentProcess } from '../agent/fixtures.js';
import { freePool, freePort } from '../agent/net-fixtures.js';

const SHELL_AGENT = join(REPO_ROOT, 'agent', 'certunnel-agent.sh');

/** A TCP forwarder whose target can be switched (new connections only), like a load balancer in front of the nodes. */
async function forwarder(port: number): Promise<{ target: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const state = { target: 0 };
  const server: Server = createServer((client) => {
    const upstream = connect(state.target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return Object.assign(state, {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  });
}

interface Device {
  readonly name: string;
  readonly agent: AgentProcess;
  readonly port: number;
  readonly greeting: string;
}

/** The agent renews after log line FROM (a serial not seen before), its tunnel comes up with it, and traffic reaches the device. */
async function renewsAndTunnels(t: ExecutionContext, d: Device, from: number, where: string): Promise<string> {
  const renewed = await d.agent.waitForLog((l) => l.event === 'renewed', `${d.name}: a renewal through ${where}`, 60_000, from);
  const serial = String(renewed.serial);
  await d.agent.waitForLog((l) => l.event === 'connected' && String(l.serial) === serial, `${d.name}: the tunnel up with ${serial} through ${where}`, 60_000, d.agent.logs.indexOf(renewed));
  await answersWithin(d.port, 'ping', `${d.greeting}ping`, 30_000);
  t.pass(`${d.name} renewed (${serial}) and tunnels through ${where}`);
  return serial;
}

test('a fleet on SQLite moves to PostgreSQL and a second node; the same agents renew and tunnel; revoked stays revoked; unused tokens enroll; the audit trail is whole', async (t) => {
  t.timeout(240_000);
  const began = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-grow-'));
  const postgres = await startPostgres();
  const services: DeviceService[] = [];
  const agents: AgentProcess[] = [];
  const brokers: BrokerProcess[] = [];
  const closers: Array<() => Promise<void>> = [];
  try {
    const [apiPort, sshPort, lbApi, lbSsh] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const pool = await freePool(16);
    const apiLb = await forwarder(lbApi);
    const sshLb = await forwarder(lbSsh);
    closers.push(apiLb.close, sshLb.close);
    const node1 = join(dir, 'node1');
    const init = await runCli(['init', '--data', node1, '--api-listen', `127.0.0.1:${apiPort}`, '--ssh-listen', `127.0.0.1:${sshPort}`, '--port-range', `${pool.first}-${pool.last}`]);
    t.is(init.code, 0, init.stderr);
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)![1]!;
    const config = JSON.parse(await readFile(join(node1, 'config.json'), 'utf8')) as Record<string, Record<string, unknown>>;
    config.api = { ...config.api, publicUrl: `https://127.0.0.1:${lbApi}` };
    config.ssh = { ...config.ssh, publicHost: '127.0.0.1', publicPort: lbSsh };
    config.certs = { deviceValiditySeconds: 60, renewAtFraction: 0.1 };
    await writeFile(join(node1, 'config.json'), JSON.stringify(config));
    const pin = (await readFile(join(node1, 'tls', 'api.pin'), 'utf8')).trim();
    const url = `https://127.0.0.1:${lbApi}`;
    const admin: ApiClientOptions = { baseUrl: url, pin, apiKey: adminKey };
    const start = async (data: string, ports: string[] = []): Promise<BrokerProcess> => {
      const b = await spawnBroker(['--data', data, '--log-level', 'warn', ...ports]);
      brokers.push(b);
      return b;
    };
    let b1 = await start(node1);
    [apiLb.target, sshLb.target] = [apiPort, sshPort];

    // ---- 1. the fleet on SQLite
    t.log(`node 1 on SQLite up after ${Math.round((Date.now() - began) / 1000)} s`);
    const batch = await apiRequest<MintTokensResponse>(admin, 'POST', '/v1/tokens', { count: 6, batch: 'line-1' });
    const tokens = batch.tokens.map((x) => x.token);
    const devices: Device[] = [];
    const nodeAgent = async (name: string, transport: 'ssh2' | 'openssh', token: string): Promise<{ config: string; state: string }> => {
      const [svc, web] = [await startDeviceService(`${name}:`), await startDeviceService(`${name}-web:`)];
      services.push(svc, web);
      const state = join(dir, `state-${name}`);
      const cfgPath = join(dir, `agent-${name}.json`);
      await writeFile(cfgPath, JSON.stringify(agentConfig({ apiUrl: url, pin }, state, transport, svc, web)));
      const enrolled = await runCli(['agent', 'enroll', '--config', cfgPath, '--name', name, '--json'], { CERTUNNEL_ENROLL_TOKEN: token });
      t.is(enrolled.code, 0, enrolled.stderr);
      return { config: cfgPath, state };
    };
    const startNodeAgent = async (name: string, transport: 'ssh2' | 'openssh', token: string): Promise<void> => {
      const { config: cfg, state } = await nodeAgent(name, transport, token);
      const agent = spawnAgent(['run', '--config', cfg]);
      agents.push(agent);
      const ports = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { ports: { first: number } };
      devices.push({ name, agent, port: ports.ports.first, greeting: `${name}:` });
    };
    await startNodeAgent('node-ssh2', 'ssh2', tokens[0]!);
    await startNodeAgent('node-openssh', 'openssh', tokens[1]!);
    {
      const svc = await startDeviceService('shell:');
      services.push(svc);
      const state = join(dir, 'state-shell');
      const enrolled = await runCommand('sh', [SHELL_AGENT, 'enroll', '--url', url, '--pin', pin, '--state-dir', state, '--name', 'shell'], { env: { CERTUNNEL_ENROLL_TOKEN: tokens[2]! } });
      t.is(enrolled.code, 0, enrolled.stderr);
      const agent = spawnShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']);
      agents.push(agent);
      const ports = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { ports: { first: number } };
      devices.push({ name: 'shell', agent, port: ports.ports.first, greeting: 'shell:' });
    }
    const stolen = await nodeAgent('stolen', 'ssh2', tokens[3]!);
    await apiRequest(admin, 'POST', '/v1/devices/stolen/revoke', { reason: 'stolen' });
    for (const d of devices) await renewsAndTunnels(t, d, 0, 'node 1 on SQLite');

    // ---- 2. stop, migrate, start on PostgreSQL (same ports); the agents keep running
    const db = await createTestDatabase(postgres);
    await b1.stop('SIGTERM');
    const sqliteAudit = await openStore({ filename: join(node1, 'broker.sqlite'), readonly: true });
    const before = (await sqliteAudit.listAudit({ limit: 10_000 })).items;
    await sqliteAudit.close();
    const migrated = await runCli(['store', 'migrate', '--data', node1, '--to', db.url, '--json']);
    t.is(migrated.code, 0, migrated.stderr);
    t.false(`${migrated.stdout}${migrated.stderr}`.includes(new URL(db.url).password), 'the password is never printed');
    const report = JSON.parse(migrated.stdout) as { tables: Array<{ table: string; rows: number }> };
    t.like(Object.fromEntries(report.tables.map((x) => [x.table, x.rows])), { devices: 4, enrollment_tokens: 6, audit_events: before.length });
    const marks = devices.map((d) => d.agent.logs.length);
    t.log(`migrated after ${Math.round((Date.now() - began) / 1000)} s`);
    b1 = await start(node1);
    for (const [i, d] of devices.entries()) await renewsAndTunnels(t, d, marks[i]!, 'node 1 on PostgreSQL');
    const pgStore = await openStore({ filename: '', databaseUrl: db.url, readonly: true });
    try {
      for (const d of devices) {
        const state = JSON.parse(await readFile(join(dir, `state-${d.name}`, 'state.json'), 'utf8')) as { serial: string };
        t.truthy(await pgStore.findCertificate(BigInt(state.serial)), `${d.name}'s current certificate was issued from PostgreSQL`);
      }
    } finally {
      await pgStore.close();
    }

    // ---- 3. a second node made after the migration; node 1 goes, the forwarder sends the devices to node 2
    t.log(`the agents renewed through node 1 on PostgreSQL after ${Math.round((Date.now() - began) / 1000)} s`);
    const node2 = join(dir, 'node2');
    await joinNode(node1, node2, db.url);
    const b2 = await start(node2, ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0']);
    const marks2 = devices.map((d) => d.agent.logs.length);
    [apiLb.target, sshLb.target] = [b2.apiPort, b2.sshPort];
    await b1.stop('SIGTERM');
    for (const [i, d] of devices.entries()) await renewsAndTunnels(t, d, marks2[i]!, 'node 2');

    // ---- 4. the revoked device, the unused tokens, the audit trail
    t.log(`the agents renewed through node 2 after ${Math.round((Date.now() - began) / 1000)} s`);
    const revoked = spawnAgent(['run', '--config', stolen.config]);
    agents.push(revoked);
    t.is(await within(revoked.exited, 60_000, -99), EXIT.REVOKED, revoked.output().slice(-3000));
    const late = await nodeAgent('late', 'ssh2', tokens[4]!);
    t.truthy(JSON.parse(await readFile(join(late.state, 'state.json'), 'utf8')), 'an unused token of the half-used batch enrolls through node 2');
    const reused = await runCli(['agent', 'enroll', '--config', late.config, '--name', 'again', '--force', '--json'], { CERTUNNEL_ENROLL_TOKEN: tokens[0]! });
    t.is(reused.code, EXIT.REFUSED, 'a used token stays used');

    const after = (await apiRequest<{ items: AuditEventView[] }>({ ...admin, baseUrl: b2.apiUrl }, 'GET', '/v1/audit?limit=1000')).items;
    const byId = new Map(after.map((e) => [String(e.id), e]));
    for (const e of before) t.like(byId.get(String(e.id)), { action: e.action, actor: e.actor, target: e.target }, `audit ${e.id} (${e.action}) kept`);
    const migrateEvents = after.filter((e) => e.action === 'store.migrate');
    t.is(migrateEvents.length, 1);
    t.is(Number(migrateEvents[0]!.id), before.length + 1, 'the migration is the next event after the SQLite file\'s last');
    t.log(`done after ${Math.round((Date.now() - began) / 1000)} s`);
  } finally {
    await Promise.all(agents.map((a) => a.stop()));
    await Promise.all(brokers.map((b) => b.stop('SIGTERM')));
    await Promise.all([...services.map((s) => s.close()), ...closers.map((c) => c())]);
    await postgres.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
