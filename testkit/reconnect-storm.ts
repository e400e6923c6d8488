/**
 * The reconnect storm, shared by its benchmark (scripts/bench/reconnect-storm.ts,
 * 200 agents) and its small test (test/agent/reconnect-storm.test.ts).
 *
 * Reconnect storm: N agents (ssh2 transport, in this one process) hold
 * tunnels to one broker (the real CLI, a child process); the broker is
 * killed (SIGKILL) and restarted on the same ports; every agent must come
 * back by itself. Reports how long it took, the peak reconnection rate, and
 * how the jittered backoff spread the fleet out. With jitter off (the
 * benchmark's --compare runs both), every agent waits the full backoff
 * bound, which shows what the jitter buys.
 *
 * oneAddress (--one-address): every agent dials from 127.0.0.1, as a fleet
 * behind one NAT (the gateway's per-address rate limit, 100 at once then
 * 10/s, applies to all of them); by default agent i dials from
 * 127.0.0.(1 + i % 250), as a fleet spread over the internet does.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type AgentLogger } from '../agent/agent.js';
import { type ApiClientOptions, apiRequest } from '../api/index.js';
import { parseAgentConfig } from '../agent/config.js';
import { enrollDevice } from '../agent/enroll.js';
import { createSsh2Transport } from '../agent/transport-ssh2.js';
import { initDataDir } from '../broker/compose/data-dir.js';
import { spawnBroker, type BrokerProcess } from './cli.js';
import { startDeviceService } from './gateway.js';

export interface StormOptions {
  readonly agents: number;
  /** false: random() = 1, every agent waits exactly the backoff bound. */
  readonly jitter: boolean;
  readonly oneAddress?: boolean;
  /** The agents' reconnect backoff; default the agent's own defaults. */
  readonly backoff?: { baseMs: number; capMs: number; minMs?: number };
  /** API port, SSH port, then the pool (agents * 2 ports) from here; default 23000 (below the ephemeral range). */
  readonly portBase?: number;
  readonly timeoutMs?: number;
  readonly log?: (line: string) => void;
}

export interface StormResult {
  readonly agents: number;
  readonly jitter: boolean;
  readonly oneAddress: boolean;
  /** ms from the restarted broker's ready line to the last agent connected again. */
  readonly allReconnectedMs: number;
  readonly firstReconnectMs: number;
  readonly medianReconnectMs: number;
  readonly p90ReconnectMs: number;
  /** Most reconnections completed within any one second / 100 ms window. */
  readonly peakPerSecond: number;
  readonly peakPer100ms: number;
  /** Standard deviation of the reconnection times, ms. */
  readonly spreadMs: number;
  /** Reconnections per 500 ms bucket after the broker was ready. */
  readonly histogram: readonly number[];
  /** Connection attempts that failed after the broker was back (rate limit, takeover races, …). */
  readonly failedAttemptsAfterReady: number;
  /** ms the broker was down (kill to ready line). */
  readonly downMs: number;
}

interface Recorder extends AgentLogger {
  readonly connectedAt: number[];
  readonly failedAt: number[];
  lost: number;
}

function recorder(): Recorder {
  const r: Recorder = {
    connectedAt: [], failedAt: [], lost: 0,
    debug: () => undefined,
    info: (obj) => {
      if ((obj as { event?: string }).event === 'connected') r.connectedAt.push(performance.now());
    },
    warn: (obj) => {
      const event = (obj as { event?: string }).event;
      if (event === 'connect_failed') r.failedAt.push(performance.now());
      if (event === 'tunnel_lost') r.lost += 1;
    },
    error: () => undefined,
  };
  return r;
}

async function until(cond: () => boolean, label: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function inBatches<T>(items: readonly T[], size: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map((item, j) => fn(item, i + j)));
}

function peak(times: readonly number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; i < sorted.length; i++) {
    while (sorted[i]! - sorted[j]! >= windowMs) j++;
    best = Math.max(best, i - j + 1);
  }
  return best;
}

const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;

/** Enrolls one agent per token (25 at a time) against the broker; their state directories. */
async function enrollAgents(dir: string, broker: { url: string; pin: string }, admin: ApiClientOptions, n: number): Promise<string[]> {
  const { tokens } = await apiRequest<{ tokens: Array<{ token: string }> }>(admin, 'POST', '/v1/tokens', { count: n });
  const stateDirs = tokens.map((_, i) => join(dir, `agent-${i}`));
  await inBatches(tokens, 25, async ({ token }, i) => {
    await enrollDevice({ stateDir: stateDirs[i]!, broker, token });
  });
  return stateDirs;
}

/** One Agent per state directory, all on one ssh2 transport, agent i dialing from 127.0.0.(1 + i % 250) unless oneAddress. */
function createAgents(options: StormOptions, stateDirs: readonly string[], servicePort: number, logger: AgentLogger): Agent[] {
  const transport = createSsh2Transport();
  const random = options.jitter ? Math.random : () => 0.999_999;
  return stateDirs.map((stateDir, i) => {
    const config = parseAgentConfig({
      stateDir,
      services: { ssh: `127.0.0.1:${servicePort}`, http: `127.0.0.1:${servicePort}` },
      ...(options.backoff ? { backoff: options.backoff } : {}),
      ssh: options.oneAddress ? {} : { bindAddress: `127.0.0.${1 + (i % 250)}` },
      connectTimeoutSeconds: 20,
    });
    return new Agent({ config, transport, logger, random, writeStatus: false });
  });
}

/** The figures of one storm, from when each agent connected again (TIMES, ms after the broker was ready). */
function summarise(options: StormOptions, times: readonly number[], failedAfterReady: number, downMs: number): StormResult {
  const sorted = [...times].sort((a, b) => a - b);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  const histogram: number[] = [];
  for (const t of times) {
    const bucket = Math.max(0, Math.floor(t / 500));
    while (histogram.length <= bucket) histogram.push(0);
    histogram[bucket]! += 1;
  }
  return {
    agents: options.agents,
    jitter: options.jitter,
    oneAddress: options.oneAddress ?? false,
    allReconnectedMs: Math.round(sorted[sorted.length - 1]!),
    firstReconnectMs: Math.round(sorted[0]!),
    medianReconnectMs: Math.round(percentile(sorted, 0.5)),
    p90ReconnectMs: Math.round(percentile(sorted, 0.9)),
    peakPerSecond: peak(times, 1000),
    peakPer100ms: peak(times, 100),
    spreadMs: Math.round(Math.sqrt(times.reduce((a, t) => a + (t - mean) ** 2, 0) / times.length)),
    histogram,
    failedAttemptsAfterReady: failedAfterReady,
    downMs: Math.round(downMs),
  };
}

export async function runStorm(options: StormOptions): Promise<StormResult> {
  const log = options.log ?? (() => undefined);
  const n = options.agents;
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-storm-'));
  // Fixed ports below the ephemeral range: the restarted broker must get its ports back, and no outgoing connection may take a tunnel port.
  const base = options.portBase ?? 23000;
  const poolFirst = base + 2;
  const data = join(dir, 'broker');
  const init = await initDataDir({
    dir: data,
    config: {
      api: { listen: `127.0.0.1:${base}` }, ssh: { listen: `127.0.0.1:${base + 1}` },
      ports: { first: poolFirst, last: poolFirst + 2 * n - 1, perDevice: 2 }, log: { level: 'warn' },
    },
  });
  let broker: BrokerProcess = await spawnBroker(['--data', data, '--log-level', 'error']);
  const service = await startDeviceService('svc:');
  const agents: Agent[] = [];
  const runs: Array<Promise<unknown>> = [];
  const rec = recorder();
  try {
    const admin: ApiClientOptions = { baseUrl: broker.apiUrl, pin: init.apiPin, apiKey: init.adminKey };
    const stateDirs = await enrollAgents(dir, { url: broker.apiUrl, pin: init.apiPin }, admin, n);
    log(`enrolled ${n} agents`);
    for (const agent of createAgents(options, stateDirs, service.port, rec)) {
      agents.push(agent);
      runs.push(agent.run());
    }
    await until(() => rec.connectedAt.length >= n, 'every agent connected', options.timeoutMs ?? 120_000);
    log(`${n} tunnels up`);

    const killedAt = performance.now();
    await broker.stop('SIGKILL');
    await until(() => rec.lost >= n, 'every agent noticed', 30_000);
    rec.connectedAt.length = 0;
    broker = await spawnBroker(['--data', data, '--log-level', 'error', '--api-listen', `127.0.0.1:${broker.apiPort}`, '--ssh-listen', `127.0.0.1:${broker.sshPort}`]);
    const readyAt = performance.now();
    log(`broker back after ${Math.round(readyAt - killedAt)} ms`);
    await until(() => rec.connectedAt.length >= n, 'every agent connected again', options.timeoutMs ?? 120_000);
    return summarise(options, rec.connectedAt.map((t) => t - readyAt), rec.failedAt.filter((t) => t >= readyAt).length, readyAt - killedAt);
  } finally {
    for (const agent of agents) agent.stop();
    await Promise.all(runs);
    await broker.stop();
    await service.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export function formatStorm(r: StormResult): string {
  const bar = (count: number): string => '#'.repeat(Math.ceil((count / r.agents) * 60));
  const lines = [
    `${r.agents} agents, ssh2, ${r.oneAddress ? 'one source address' : 'one source address per agent'}, jitter ${r.jitter ? 'on (full jitter)' : 'OFF (random() = 1)'}`,
    `  broker down ${r.downMs} ms; all reconnected ${r.allReconnectedMs} ms after it was ready (first ${r.firstReconnectMs}, median ${r.medianReconnectMs}, p90 ${r.p90ReconnectMs})`,
    `  peak rate: ${r.peakPerSecond} reconnections in one second, ${r.peakPer100ms} in 100 ms; spread (std dev) ${r.spreadMs} ms; failed attempts after ready: ${r.failedAttemptsAfterReady}`,
    '  reconnections per 500 ms after the broker was ready:',
    ...r.histogram.map((count, i) => `  ${String(i * 500).padStart(6)} ms ${String(count).padStart(4)} ${bar(count)}`),
  ];
  return `${lines.join('\n')}\n`;
}
