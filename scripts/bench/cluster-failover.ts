/**
 * npm run bench:cluster-failover: a node of a three-node cluster dies
 * (SIGKILL) under 200 agents; how long until its devices are back on the
 * other nodes, in the agents' view and in the store's.
 *
 * PostgreSQL (testkit/postgres.ts) and three real broker processes
 * (testkit/cluster.ts); N agents enrolled through the nodes' APIs (in turn)
 * and run in-process (agent/agent.ts, real ssh2 transport) in a few worker
 * processes (cluster-failover-agents.ts), so that this process only
 * watches. Every agent got the three SSH endpoints with its enrollment and
 * picked one at random. Then, in each phase:
 *
 *   1. every agent connected, and the store's presence agrees (each device
 *      online, on the node its agent is connected to);
 *   2. the node holding the most tunnels is stopped (phase 1: SIGKILL;
 *      phase 2, the comparison: SIGTERM, a clean stop), at t0;
 *   3. measured from t0, polling every 100 ms:
 *      - tunnel_lost and the next `connected` of each agent that was on it
 *        (detection, reconnection: min/p50/p90/max; all back),
 *      - the store: the first moment no device row names the node, and the
 *        first moment every device is online on the node its agent holds,
 *      - GET /v1/nodes on a surviving node: the node listed down (SIGKILL,
 *        after cluster.downAfterSeconds) or stopped (SIGTERM), and the
 *        node.down audit row's devicesCleared (presence the down-marking
 *        still had to clear);
 *      - agents on the surviving nodes that lost their tunnel (disturbed)
 *        and failed connection attempts;
 *   4. two seconds later, the store once more (online, on the dead node,
 *      disagreeing with the agents); then the agents stop and the node is
 *      started again on its ports, for the next phase (the agents spread
 *      afresh when they start).
 *
 * All processes run on this one machine: a killed node's sockets are reset
 * by the kernel, so agents notice at once. A host that vanishes from the
 * network is noticed only by SSH keepalives (the agent's transport); this
 * bench does not measure that.
 *
 * Usage: npm run bench:cluster-failover [-- --agents 200 --workers 2
 *        --heartbeat 5 --down-after 20 --no-compare --json]
 * --heartbeat/--down-after set CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS and
 * CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS (default: the product's, 5 and 20).
 *
 * Long file: the phases, their polls and the report read best in one place.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiRequest, type ApiClientOptions, type CaResponse, type ListAuditResponse, type ListNodesResponse, type MintTokensResponse } from '../../api/index.js';
import { enrollDevice } from '../../agent/enroll.js';
import { openStore, type Store } from '../../broker/store/index.js';
import type { DeviceRecord } from '../../broker/store/types.js';
import { startTestCluster, type TestCluster } from '../../testkit/cluster.js';
import { nodeApi } from '../../testkit/cluster-device.js';
import { startDeviceService } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import type { AgentEvent, StartMessage } from './cluster-failover-agents.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const AGENTS = Number(arg('agents') ?? 200);
const WORKERS = Math.max(1, Math.min(AGENTS, Number(arg('workers') ?? 2)));
const HEARTBEAT = arg('heartbeat');
const DOWN_AFTER = arg('down-after');
const JSON_OUT = process.argv.includes('--json');
const COMPARE = !process.argv.includes('--no-compare');
const POLL_MS = 100;
const PORT_FIRST = 25000;

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs: number, everyMs = POLL_MS): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

interface Stats { n: number; min: number; p50: number; p90: number; max: number }

function stats(values: readonly number[]): Stats | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number) => Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))]!);
  return { n: s.length, min: Math.round(s[0]!), p50: at(0.5), p90: at(0.9), max: Math.round(s[s.length - 1]!) };
}

// ---- the fleet: worker processes and what their agents report -------------

class Fleet {
  readonly events: AgentEvent[][];
  /** Each agent's endpoint while its tunnel is up, else null. */
  readonly endpoint: Array<string | null>;
  readonly #workers: ChildProcess[] = [];
  #stopped = 0;

  constructor(readonly n: number) {
    this.events = Array.from({ length: n }, () => []);
    this.endpoint = Array.from({ length: n }, () => null);
    const script = fileURLToPath(new URL('./cluster-failover-agents.ts', import.meta.url));
    for (let w = 0; w < WORKERS; w++) {
      const child = fork(script, [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      child.on('message', (m: AgentEvent | { type: 'stopped' } | { type: 'error'; message: string }) => {
        if (m.type === 'stopped') this.#stopped += 1;
        else if (m.type === 'error') log(`agent worker: ${m.message}`);
        else {
          this.events[m.index]!.push(m);
          this.endpoint[m.index] = m.event === 'connected' ? m.endpoint : m.event === 'lost' ? null : this.endpoint[m.index]!;
        }
      });
      this.#workers.push(child);
    }
  }

  start(stateDirs: readonly string[], servicePort: number): void {
    this.#workers.forEach((child, w) => {
      const agents = stateDirs.map((stateDir, index) => ({ index, stateDir })).filter((a) => a.index % WORKERS === w);
      child.send({ type: 'start', agents, servicePort } satisfies StartMessage);
    });
  }

  async stopAgents(): Promise<void> {
    this.#stopped = 0;
    for (const child of this.#workers) child.send({ type: 'stop' });
    await until('the agents to stop', () => (this.#stopped === this.#workers.length ? true : undefined), 60_000);
    this.endpoint.fill(null);
  }

  allConnected(): boolean {
    return this.endpoint.every((e) => e !== null);
  }

  close(): void {
    for (const child of this.#workers) child.disconnect();
  }
}

// ---- one phase --------------------------------------------------------------

interface NodeRef { index: number; id: string; endpoint: string }

interface PhaseResult {
  signal: 'SIGKILL' | 'SIGTERM';
  victim: { node: number; id: string; tunnels: number };
  tunnelsPerNodeBefore: number[];
  detectMs: Stats | null;
  reconnectMs: Stats | null;
  allBackMs: number;
  movedTo: number[];
  failedAttempts: Record<string, number>;
  disturbed: number;
  /** First poll where no device row named the node. */
  presenceOffNodeMs: number;
  /** First poll where all N were online, each on the node its agent holds. */
  presenceAgreedMs: number;
  /** Fewest devices online in any poll after t0 (N: an operator never saw one offline). */
  minOnline: number;
  /** GET /v1/nodes listed it down (SIGKILL) or stopped (SIGTERM). */
  nodeListedMs: number;
  nodeListedAs: string;
  /** The node.down audit row seen (SIGKILL only): the down-marking ran, a surviving node's heartbeat after the node went stale. */
  nodeDownAuditedMs: number | null;
  /** Its devicesCleared: presence rows still naming the node that the marking cleared. */
  downCleared: number | null;
  afterSettle: { online: number; onNode: number; disagreeing: number };
}

async function allDevices(store: Store): Promise<DeviceRecord[]> {
  const out: DeviceRecord[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listDevices({ limit: 1000, cursor });
    out.push(...page.items);
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
  return out;
}

/** How far the store's presence is from the agents' view. */
function presence(devices: readonly DeviceRecord[], ids: readonly string[], fleet: Fleet, nodeOf: Map<string, string>, victimId: string) {
  const byId = new Map(devices.map((d) => [d.id, d]));
  let online = 0;
  let disagreeing = 0;
  for (const [i, id] of ids.entries()) {
    const d = byId.get(id);
    if (d?.online) online += 1;
    const ep = fleet.endpoint[i];
    if (!d?.online || ep === null || d.nodeId !== nodeOf.get(ep!)) disagreeing += 1;
  }
  return { online, onNode: devices.filter((d) => d.nodeId === victimId).length, disagreeing };
}

async function runPhase(
  signal: 'SIGKILL' | 'SIGTERM', cluster: TestCluster, store: Store, fleet: Fleet, nodes: readonly NodeRef[],
  deviceIds: readonly string[], stateDirs: readonly string[], servicePort: number, downAfterS: number,
): Promise<PhaseResult> {
  const nodeOf = new Map(nodes.map((n) => [n.endpoint, n.id]));
  fleet.start(stateDirs, servicePort);
  await until('every agent connected', () => (fleet.allConnected() ? true : undefined), 300_000);
  await until('the store to agree with the agents', async () => (presence(await allDevices(store), deviceIds, fleet, nodeOf, '').disagreeing === 0 ? true : undefined), 60_000);
  const perNode = nodes.map((n) => fleet.endpoint.filter((e) => e === n.endpoint).length);
  const v = perNode.indexOf(Math.max(...perNode));
  const victim = nodes[v]!;
  const onVictim = fleet.endpoint.flatMap((e, i) => (e === victim.endpoint ? [i] : []));
  const others = fleet.endpoint.flatMap((e, i) => (e !== victim.endpoint ? [i] : []));
  log(`${signal}: tunnels per node ${perNode.join('/')}; stopping node ${v + 1} (${onVictim.length} tunnels)`);
  const survivor = nodeApi(cluster, v === 0 ? 1 : 0);
  await sleep(1000);

  const t0 = now();
  const stopped = cluster.nodes[v]!.broker.stop(signal);
  const backAt = (i: number) => fleet.events[i]!.find((e) => e.event === 'connected' && e.at > t0)?.at;
  const lostAt = (i: number) => fleet.events[i]!.find((e) => e.event === 'lost' && e.at > t0)?.at;

  const expected = signal === 'SIGKILL' ? 'down' : 'stopped';
  const deadline = Math.max(120_000, downAfterS * 3000 + 60_000);
  let minOnline = deviceIds.length;
  let presenceOffNodeMs = -1;
  const presenceDone = until('the store to agree after the stop', async () => {
    const p = presence(await allDevices(store), deviceIds, fleet, nodeOf, victim.id);
    const t = now() - t0;
    minOnline = Math.min(minOnline, p.online);
    if (p.onNode === 0 && presenceOffNodeMs < 0) presenceOffNodeMs = t;
    return p.disagreeing === 0 && p.onNode === 0 && onVictim.every((i) => backAt(i) !== undefined) ? t : undefined;
  }, deadline);
  const listedDone = until(`node ${v + 1} listed ${expected}`, async () => {
    const n = (await apiRequest<ListNodesResponse>(survivor, 'GET', '/v1/nodes')).items.find((x) => x.id === victim.id);
    return n?.status === expected ? { ms: now() - t0, as: n.status } : undefined;
  }, deadline);
  const backDone = until('every agent of the node back', () => (onVictim.every((i) => backAt(i) !== undefined) ? true : undefined), deadline, 20);
  // The down-marking (a surviving node's next heartbeat after the node is stale): node.down, with the presence it cleared.
  const sweptDone = signal === 'SIGKILL'
    ? until('the node.down audit row', async () => {
      const audit = await apiRequest<ListAuditResponse>(survivor, 'GET', '/v1/audit?action=node.down');
      const row = audit.items.find((a) => a.target === victim.id && Date.parse(a.at) >= t0 - 1000);
      return row ? { ms: now() - t0, cleared: Number(row.details.devicesCleared ?? 0) } : undefined;
    }, deadline, 250)
    : Promise.resolve(null);
  const [presenceAgreedMs, listed, , , swept] = await Promise.all([presenceDone, listedDone, backDone, stopped, sweptDone]);
  await sleep(2000);
  const settled = presence(await allDevices(store), deviceIds, fleet, nodeOf, victim.id);
  const failedAttempts: Record<string, number> = {};
  for (const list of fleet.events) for (const e of list) if (e.event === 'failed' && e.at > t0) failedAttempts[e.code ?? '?'] = (failedAttempts[e.code ?? '?'] ?? 0) + 1;
  const back = onVictim.map((i) => backAt(i)! - t0);
  const result: PhaseResult = {
    signal,
    victim: { node: v + 1, id: victim.id, tunnels: onVictim.length },
    tunnelsPerNodeBefore: perNode,
    detectMs: stats(onVictim.flatMap((i) => (lostAt(i) === undefined ? [] : [lostAt(i)! - t0]))),
    reconnectMs: stats(back),
    allBackMs: Math.round(Math.max(...back)),
    movedTo: nodes.map((n) => onVictim.filter((i) => fleet.endpoint[i] === n.endpoint).length),
    failedAttempts,
    disturbed: others.filter((i) => lostAt(i) !== undefined).length,
    presenceOffNodeMs: Math.round(presenceOffNodeMs),
    presenceAgreedMs: Math.round(presenceAgreedMs),
    minOnline,
    nodeListedMs: Math.round(listed.ms),
    nodeListedAs: listed.as,
    nodeDownAuditedMs: swept && Math.round(swept.ms),
    downCleared: swept?.cleared ?? null,
    afterSettle: settled,
  };

  await fleet.stopAgents();
  const { apiPort, sshPort } = cluster.nodes[v]!.broker;
  await cluster.restart(v, ['--api-listen', `127.0.0.1:${apiPort}`, '--ssh-listen', `127.0.0.1:${sshPort}`]);
  await until(`node ${v + 1} up again`, async () => {
    const items = (await apiRequest<ListNodesResponse>(survivor, 'GET', '/v1/nodes')).items;
    return items.filter((x) => x.status === 'up').length === nodes.length ? true : undefined;
  }, 60_000, 250);
  return result;
}

// ---- setup, report ----------------------------------------------------------

async function enroll(cluster: TestCluster, dir: string, n: number): Promise<{ ids: string[]; stateDirs: string[] }> {
  const tokens: string[] = [];
  for (let left = n; left > 0; left -= 100) {
    const minted = await apiRequest<MintTokensResponse>(nodeApi(cluster, 0), 'POST', '/v1/tokens', { count: Math.min(100, left) });
    tokens.push(...minted.tokens.map((t) => t.token));
  }
  const stateDirs = tokens.map((_, i) => join(dir, 'agents', `agent-${i}`));
  const ids: string[] = new Array<string>(n);
  for (let i = 0; i < n; i += 24) {
    await Promise.all(tokens.slice(i, i + 24).map(async (token, j) => {
      const k = i + j;
      const node = cluster.nodes[k % cluster.nodes.length]!.broker;
      const e = await enrollDevice({ stateDir: stateDirs[k]!, broker: { url: node.apiUrl, pin: cluster.pin }, token, name: `failover-${k}` });
      ids[k] = e.state.deviceId;
    }));
  }
  return { ids, stateDirs };
}

function format(r: PhaseResult, n: number): string {
  const s = (x: Stats | null) => (x ? `min ${x.min}  p50 ${x.p50}  p90 ${x.p90}  max ${x.max}` : '-');
  const failed = Object.entries(r.failedAttempts).map(([k, c]) => `${c} ${k}`).join(', ') || 'none';
  return [
    `${r.signal} of node ${r.victim.node} (${r.victim.tunnels} of ${n} tunnels; per node before: ${r.tunnelsPerNodeBefore.join('/')}), ms after the signal:`,
    `  agents noticed (tunnel_lost)        ${s(r.detectMs)}`,
    `  agents connected again              ${s(r.reconnectMs)}`,
    `  ${`all ${r.victim.tunnels} back (agents' view)`.padEnd(36)}${r.allBackMs}  (to nodes ${r.movedTo.map((c, i) => `${i + 1}: ${c}`).filter((_, i) => i !== r.victim.node - 1).join(', ')})`,
    `  store: no row names the node        ${r.presenceOffNodeMs}`,
    `  store: all online where agents are  ${r.presenceAgreedMs}  (fewest of ${n} online in any poll: ${r.minOnline})`,
    `  node listed ${r.nodeListedAs.padEnd(24)}${r.nodeListedMs}`,
    ...(r.nodeDownAuditedMs === null ? [] : [`  node.down audited                   ${r.nodeDownAuditedMs}  (presence rows it cleared: ${r.downCleared})`]),
    `  agents on the other nodes that lost their tunnel: ${r.disturbed}; failed connection attempts: ${failed}`,
    `  2 s later: ${r.afterSettle.online} online, ${r.afterSettle.onNode} rows on the stopped node, ${r.afterSettle.disagreeing} disagreeing with the agents`,
  ].join('\n');
}

async function main(): Promise<void> {
  const env: NodeJS.ProcessEnv = {
    ...(HEARTBEAT ? { CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS: HEARTBEAT } : {}),
    ...(DOWN_AFTER ? { CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS: DOWN_AFTER } : {}),
  };
  const heartbeatS = Number(HEARTBEAT ?? 5);
  const downAfterS = Number(DOWN_AFTER ?? 20);
  await withTempDir(async (dir) => {
    const cluster = await startTestCluster({ nodes: 3, dir, env, initArgs: ['--port-range', `${PORT_FIRST}-${PORT_FIRST + 2 * AGENTS + 99}`] });
    const service = await startDeviceService('failover\n');
    const store = await openStore({ filename: join(dir, 'unused.sqlite'), databaseUrl: cluster.databaseUrl });
    const fleet = new Fleet(AGENTS);
    const results: PhaseResult[] = [];
    try {
      const nodes: NodeRef[] = await Promise.all(cluster.nodes.map(async (n, index) => ({
        index, id: (JSON.parse(await readFile(join(n.dataDir, 'node.json'), 'utf8')) as { id: string }).id, endpoint: `127.0.0.1:${n.broker.sshPort}`,
      })));
      // Every node names all three endpoints before the first enrollment.
      for (const [i, n] of cluster.nodes.entries()) {
        const ref: ApiClientOptions = { baseUrl: n.broker.apiUrl, pin: cluster.pin };
        await until(`node ${i + 1} to know the three endpoints`, async () => ((await apiRequest<CaResponse>(ref, 'GET', '/v1/ca')).sshEndpoints?.length === 3 ? true : undefined), 60_000, 250);
      }
      const t = now();
      const { ids, stateDirs } = await enroll(cluster, dir, AGENTS);
      log(`enrolled ${AGENTS} agents in ${Math.round(now() - t)} ms; heartbeat ${heartbeatS} s, down after ${downAfterS} s`);
      results.push(await runPhase('SIGKILL', cluster, store, fleet, nodes, ids, stateDirs, service.port, downAfterS));
      if (COMPARE) results.push(await runPhase('SIGTERM', cluster, store, fleet, nodes, ids, stateDirs, service.port, downAfterS));
    } finally {
      fleet.close();
      await store.close();
      await service.close();
      await cluster.stop();
    }
    if (JSON_OUT) {
      process.stdout.write(`${JSON.stringify({ agents: AGENTS, workers: WORKERS, heartbeatSeconds: heartbeatS, downAfterSeconds: downAfterS, phases: results }, null, 2)}\n`);
      return;
    }
    process.stdout.write(`cluster failover: 3 nodes on PostgreSQL, ${AGENTS} agents (ssh2, ${WORKERS} worker processes), heartbeat ${heartbeatS} s, down after ${downAfterS} s\n`);
    for (const r of results) process.stdout.write(`${format(r, AGENTS)}\n`);
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`cluster-failover: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
