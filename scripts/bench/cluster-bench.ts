/**
 * npm run bench:cluster: the figures docs/benchmarks.md ("Sizing a
 * cluster") derives its 100,000-device estimate from, in one run:
 *
 * 1. enrollments/s and renewals/s over HTTPS at concurrency 32 on a broker
 *    process with SQLite, on one with PostgreSQL (a throwaway cluster,
 *    testkit/postgres.ts), and on three broker processes sharing one
 *    PostgreSQL database (testkit/cluster.ts), summed over the nodes;
 *    p50/p99 latency and CPU per request (cluster/control-plane.ts);
 * 2. the memory of one broker node holding N idle tunnels, default 10,000
 *    (cluster/idle-tunnels.ts).
 *
 * Usage:
 *   npm run bench:cluster [-- --enrollments 2000 --renewals 4000 --concurrency 32 --nodes 3
 *                             --tunnels 10000 --workers 4 --in-flight 4 --idle-seconds 30 --port-first 10000
 *                             --skip-api --skip-tunnels --json]
 *
 * Needs PostgreSQL's server binaries (.ci/run installs them) for part 1,
 * and an open-file limit of at least 2 x tunnels + 1000 for part 2 (the npm
 * script raises it with ulimit -n, which needs root beyond the hard limit).
 * Any failed request, tunnel that does not come up or drops, or echo that
 * does not come back ends the run with a non-zero exit.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostgres, type PostgresCluster } from '../../testkit/postgres.js';
import { measureControlPlane, type SetupResult } from './cluster/control-plane.js';
import { measureIdleTunnels, type IdleResult, loadAverage } from './cluster/idle-tunnels.js';
import { formatLoadRow, LOAD_HEADER } from './http-load.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

function count(name: string, fallback: number, min = 1): number {
  const raw = flag(name);
  const value = raw === undefined ? fallback : Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer of at least ${min}, not ${raw}`);
  return value;
}

const options = {
  enrollments: count('enrollments', 2000),
  renewals: count('renewals', 4000),
  concurrency: count('concurrency', 32),
  nodes: count('nodes', 3, 0),
  tunnels: count('tunnels', 10_000, 2),
  workers: count('workers', 4),
  inFlight: count('in-flight', 4),
  idleSeconds: count('idle-seconds', 30, 0),
  portFirst: count('port-first', 10_000, 1024),
  skipApi: process.argv.includes('--skip-api'),
  skipTunnels: process.argv.includes('--skip-tunnels'),
  json: process.argv.includes('--json'),
};
/** Everything is stopped past this (a stuck phase must not hold the machine). */
const TOTAL_DEADLINE_MS = 60 * 60_000;

const log = (line: string): void => {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
};

function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

function formatControlPlane(results: readonly SetupResult[]): string {
  const lines = [`control plane: HTTPS keep-alive, Ed25519 keys, SSHSIG renewals, concurrency ${options.concurrency} per node`, LOAD_HEADER];
  for (const r of results) lines.push(formatLoadRow(r.enroll), formatLoadRow(r.renew));
  lines.push('', 'CPU ms per request (broker processes / PostgreSQL):');
  for (const r of results) {
    const side = (c: { broker: number; postgres?: number }): string => `${c.broker}${c.postgres === undefined ? '' : ` / ${c.postgres}`}`;
    lines.push(`  ${r.setup.padEnd(22)} enroll ${side(r.cpuMsPerEnroll).padEnd(14)} renew ${side(r.cpuMsPerRenew)}`);
  }
  return lines.join('\n');
}

function formatIdle(r: IdleResult): string {
  const row = (label: string, m: IdleResult['start']): string => `  ${label.padEnd(34)} RSS ${mib(m.rssKiB).padStart(11)}   heap used ${mib(m.heapUsedKiB).padStart(10)} of ${mib(m.heapTotalKiB).padStart(10)}   external ${mib(m.externalKiB).padStart(9)}`;
  return [
    `idle tunnels: one broker node (embedded gateway, SQLite), ${r.tunnels} devices each holding one bound forward; open-file limit ${r.fdLimit}, broker descriptors with all up ${r.brokerFds}`,
    formatLoadRow(r.enroll),
    `  ${r.up} of ${r.tunnels} logins (certificate checked, forward bound) took ${r.loginSeconds.toFixed(1)} s = ${(r.up / r.loginSeconds).toFixed(0)}/s, with ${r.retries} retries after refusals or timeouts`,
    row('broker at start', r.start),
    row(`after ${r.tunnels} enrollments`, r.enrolled),
    row(`${r.tunnels} tunnels up`, r.allUp),
    row(`after ${r.idleSeconds} s idle`, r.afterIdle),
    `  per tunnel (after idle - enrolled) / ${r.up}: RSS ${r.perTunnel.rssKiB} KiB, heap used ${r.perTunnel.heapUsedKiB} KiB, external ${r.perTunnel.externalKiB} KiB`,
    `  broker total RSS with ${r.up} tunnels: ${mib(r.afterIdle.rssKiB)} (goal: under 1 GiB) — ${r.afterIdle.rssKiB < 1024 * 1024 ? 'met' : 'NOT met'}`,
    `  broker CPU while idle: ${r.idleCpuPercent}% of one core; ${r.echoChecked} tunnels checked end to end; device processes' RSS ${mib(r.devicesRssKiB)}`,
    `  devices online in the store: ${r.onlineInStore.allUp} with all up, ${r.onlineInStore.afterIdle} after idling`,
    `  load average before: ${r.loadBefore}, after: ${r.loadAfter}`,
    ...r.problems.map((p) => `  PROBLEM: ${p}`),
  ].join('\n');
}

async function main(): Promise<void> {
  const deadline = setTimeout(() => {
    log('cluster-bench: over the total deadline, stopping');
    process.exit(2); // the PostgreSQL cluster's exit handler stops it; the forked children exit when their channel closes
  }, TOTAL_DEADLINE_MS);
  deadline.unref();
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-cluster-bench-'));
  let postgres: PostgresCluster | undefined;
  const out: { machine: string; controlPlane?: SetupResult[]; idle?: IdleResult } = {
    machine: `${cpus().length} cores (${cpus()[0]?.model ?? '?'}), node ${process.version}, load average at start ${await loadAverage()}`,
  };
  try {
    if (!options.skipApi) {
      log('starting a throwaway PostgreSQL…');
      postgres = await startPostgres();
      out.controlPlane = await measureControlPlane({ enrollments: options.enrollments, renewals: options.renewals, concurrency: options.concurrency, clusterNodes: options.nodes, dir: join(dir, 'api'), postgres, log });
      await postgres.stop();
      postgres = undefined;
    }
    if (!options.skipTunnels) {
      out.idle = await measureIdleTunnels({ tunnels: options.tunnels, workers: options.workers, inFlight: options.inFlight, idleSeconds: options.idleSeconds, portFirst: options.portFirst, concurrency: options.concurrency, dir: join(dir, 'idle'), log });
    }
  } finally {
    await postgres?.stop();
    await rm(dir, { recursive: true, force: true });
  }
  if (options.json) {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    if (out.idle && out.idle.problems.length > 0) throw new Error(`idle tunnels: ${out.idle.problems.join('; ')}`);
    return;
  }
  process.stdout.write(`${out.machine}\n\n`);
  if (out.controlPlane) process.stdout.write(`${formatControlPlane(out.controlPlane)}\n\n`);
  if (out.idle) process.stdout.write(`${formatIdle(out.idle)}\n`);
  if (out.idle && out.idle.problems.length > 0) throw new Error(`idle tunnels: ${out.idle.problems.join('; ')}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`cluster-bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
