/**
 * bench:cluster, part 1: enrollments/s and renewals/s over the real HTTPS
 * API, in one run, on a broker process with its SQLite store, on one with
 * its store in PostgreSQL, and on three broker processes sharing one
 * PostgreSQL database (summed over the nodes). Devices are real Ed25519
 * keys; renewals are SSHSIG-signed requests as the agent builds them
 * (agent/renew-request.ts). Also the CPU each side spent per request, from
 * /proc: the broker processes, and PostgreSQL's postmaster and backends.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../../ca/index.js';
import { runCli, spawnBroker, type BrokerProcess } from '../../../testkit/cli.js';
import { startTestCluster } from '../../../testkit/cluster.js';
import { createTestDatabase, type PostgresCluster } from '../../../testkit/postgres.js';
import { assertNoFailures, loadAgent, mintTokens, runLoad, type LoadRun } from '../http-load.js';
import { descendants, usageOf } from '../proc-usage.js';

export interface ControlPlaneOptions {
  readonly enrollments: number;
  readonly renewals: number;
  /** Requests in flight per broker node. */
  readonly concurrency: number;
  /** Broker nodes on the shared PostgreSQL database (0: that setup is skipped). */
  readonly clusterNodes: number;
  readonly dir: string;
  readonly postgres: PostgresCluster;
  readonly log: (line: string) => void;
}

export interface SetupResult {
  readonly setup: string;
  readonly enroll: LoadRun;
  readonly renew: LoadRun;
  /** CPU ms per request: broker processes, PostgreSQL (absent on SQLite). */
  readonly cpuMsPerEnroll: { broker: number; postgres?: number };
  readonly cpuMsPerRenew: { broker: number; postgres?: number };
}

/** Well below the ephemeral range; nothing binds them here (no tunnels in this part). */
const INIT_ARGS = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '10000-19999', '--ports-per-device', '1'];

interface Target {
  readonly setup: string;
  readonly urls: string[];
  readonly adminKey: string;
  /** The process trees whose CPU time is counted as the broker's. */
  readonly brokerPids: number[];
  readonly postgresPid?: number;
}

async function postmasterPid(postgres: PostgresCluster): Promise<number> {
  return Number((await readFile(join(postgres.dir, 'data', 'postmaster.pid'), 'utf8')).split('\n')[0]);
}

function cpuSeconds(roots: readonly number[]): number {
  return usageOf(roots.flatMap((pid) => descendants(pid))).cpuSeconds;
}

/** Enrollments then renewals against TARGET, with the CPU each side spent. */
async function measure(target: Target, o: ControlPlaneOptions): Promise<SetupResult> {
  const agent = loadAgent(o.concurrency);
  try {
    const tokens = await mintTokens(agent, target.urls[0]!, target.adminKey, o.enrollments);
    const keys: KeyPair[] = tokens.map(() => generateKeyPair());
    const enrollBodies = tokens.map((token, i) => ({ token, publicKey: formatPublicKey(keys[i]!.publicKey) }));
    const deviceIds: string[] = [];
    const load = { agent, urls: target.urls, concurrency: o.concurrency };
    const pgRoots = target.postgresPid === undefined ? [] : [target.postgresPid];
    const timed = async (run: () => Promise<LoadRun>): Promise<{ run: LoadRun; cpu: { broker: number; postgres?: number } }> => {
      const broker0 = cpuSeconds(target.brokerPids);
      const pg0 = cpuSeconds(pgRoots);
      const result = await run();
      assertNoFailures(result);
      const perRequest = (s: number): number => Math.round((s * 1e5) / result.count) / 100;
      const broker = perRequest(cpuSeconds(target.brokerPids) - broker0);
      return { run: result, cpu: target.postgresPid === undefined ? { broker } : { broker, postgres: perRequest(cpuSeconds(pgRoots) - pg0) } };
    };
    o.log(`${target.setup}: ${o.enrollments} enrollments…`);
    const enroll = await timed(() => runLoad({ ...load, label: `${target.setup} enroll`, bodies: enrollBodies, path: '/v1/enroll', expect: 201, answered: (i, json) => (deviceIds[i] = (json as { deviceId: string }).deviceId) }));
    // Signed just before they are sent: the broker refuses timestamps older than renew.maxSkewSeconds.
    const renewBodies = Array.from({ length: o.renewals }, (_, i) => {
      const d = i % deviceIds.length;
      return buildRenewRequest({ deviceId: deviceIds[d]!, key: keys[d]! });
    });
    o.log(`${target.setup}: ${o.renewals} renewals…`);
    const renew = await timed(() => runLoad({ ...load, label: `${target.setup} renew`, bodies: renewBodies, path: '/v1/renew', expect: 200 }));
    return { setup: target.setup, enroll: enroll.run, renew: renew.run, cpuMsPerEnroll: enroll.cpu, cpuMsPerRenew: renew.cpu };
  } finally {
    agent.destroy();
  }
}

/** `certunnel init` (EXTRA: --database-url) and `certunnel broker` on DIR. */
async function singleBroker(dir: string, extra: readonly string[]): Promise<{ broker: BrokerProcess; adminKey: string }> {
  const init = await runCli(['init', '--data', dir, ...INIT_ARGS, ...extra]);
  if (init.code !== 0) throw new Error(`certunnel init failed: ${init.stderr}`);
  const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)?.[1];
  if (!adminKey) throw new Error('certunnel init printed no admin key');
  return { broker: await spawnBroker(['--data', dir, '--log-level', 'warn']), adminKey };
}

async function onSingle(setup: string, dir: string, extra: readonly string[], o: ControlPlaneOptions, postgresPid?: number): Promise<SetupResult> {
  const { broker, adminKey } = await singleBroker(dir, extra);
  try {
    return await measure({ setup, urls: [broker.apiUrl], adminKey, brokerPids: [broker.child.pid!], ...(postgresPid === undefined ? {} : { postgresPid }) }, o);
  } finally {
    await broker.stop();
  }
}

/** The setups one after the other (never two at once: they would share the two cores). */
export async function measureControlPlane(o: ControlPlaneOptions): Promise<SetupResult[]> {
  const results: SetupResult[] = [];
  await mkdir(join(o.dir, 'cluster'), { recursive: true });
  const pgPid = await postmasterPid(o.postgres);
  results.push(await onSingle('SQLite, 1 node', join(o.dir, 'sqlite'), [], o));
  const db = await createTestDatabase(o.postgres);
  results.push(await onSingle('PostgreSQL, 1 node', join(o.dir, 'pg1'), ['--database-url', db.url], o, pgPid));
  await db.drop();
  if (o.clusterNodes > 0) {
    o.log(`starting ${o.clusterNodes} broker nodes on one PostgreSQL database…`);
    const cluster = await startTestCluster({ nodes: o.clusterNodes, dir: join(o.dir, 'cluster'), initArgs: INIT_ARGS.slice(4), postgres: o.postgres });
    try {
      results.push(await measure({
        setup: `PostgreSQL, ${o.clusterNodes} nodes`,
        urls: cluster.nodes.map((n) => n.broker.apiUrl),
        adminKey: cluster.adminKey,
        brokerPids: cluster.nodes.map((n) => n.broker.child.pid!),
        postgresPid: pgPid,
      }, o));
    } finally {
      await cluster.stop();
    }
  }
  return results;
}
