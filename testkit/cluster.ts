/**
 * A cluster of real broker processes on one throwaway PostgreSQL: node 1
 * is made with `certunnel init --database-url`, the others as an operator
 * makes them (`certunnel node token` on node 1's data directory, then
 * `certunnel join` with it), each started with `certunnel broker` on its
 * own ephemeral ports.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli, spawnBroker, type BrokerProcess } from './cli.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from './postgres.js';

export interface ClusterNode {
  readonly dataDir: string;
  broker: BrokerProcess;
}

export interface TestCluster {
  readonly postgres: PostgresCluster;
  readonly databaseUrl: string;
  readonly nodes: ClusterNode[];
  readonly adminKey: string;
  /** The API's TLS pin (every node serves the same key). */
  readonly pin: string;
  /** Starts node I again (after a stop or a kill), same data directory. */
  restart(i: number, extraArgs?: readonly string[]): Promise<BrokerProcess>;
  /** Stops every broker (SIGTERM) and the database. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  readonly nodes: number;
  /** Parent directory for the nodes' data directories. */
  readonly dir: string;
  /** Extra `certunnel init` arguments (node 1), e.g. ['--port-range', '21000-21999']. */
  readonly initArgs?: readonly string[];
  /** Extra `certunnel broker` arguments for every node. */
  readonly brokerArgs?: readonly string[];
  /** An already running PostgreSQL to use (else one is started, and stopped by stop()). */
  readonly postgres?: PostgresCluster;
  readonly env?: NodeJS.ProcessEnv;
  /** Merged into node 1's config.json after init (so every node gets it), e.g. { ssh: { reconcileSeconds: 3600 } }. */
  readonly config?: Record<string, unknown>;
}

const LISTEN = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0'];

/** A node join token minted on FROM's host (`certunnel node token --data FROM --json`). */
export async function mintJoinToken(from: string, env?: NodeJS.ProcessEnv, extraArgs: readonly string[] = []): Promise<string> {
  const minted = await runCli(['node', 'token', '--data', from, '--json', ...extraArgs], env);
  if (minted.code !== 0) throw new Error(`node token failed: ${minted.stderr}`);
  return (JSON.parse(minted.stdout) as { token: string }).token;
}

/** Another node of FROM's cluster in TO: a join token from FROM, then `certunnel join` (ephemeral ports on 127.0.0.1). */
export async function joinNode(from: string, to: string, databaseUrl: string, env?: NodeJS.ProcessEnv): Promise<void> {
  const token = await mintJoinToken(from, env);
  const joined = await runCli(['join', '--data', to, '--database-url', databaseUrl, ...LISTEN, '--json'], { ...env, CERTUNNEL_JOIN_TOKEN: token });
  if (joined.code !== 0) throw new Error(`join failed: ${joined.stderr}`);
}

/** Deep-merges PATCH into the JSON file at PATH. */
async function patchConfig(path: string, patch: Record<string, unknown>): Promise<void> {
  const merge = (base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> => {
    const out = { ...base };
    for (const [k, v] of Object.entries(over)) {
      const b = out[k];
      out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' ? merge(b as Record<string, unknown>, v as Record<string, unknown>) : v;
    }
    return out;
  };
  await writeFile(path, `${JSON.stringify(merge(JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>, patch), null, 2)}\n`);
}

export async function startTestCluster(o: ClusterOptions): Promise<TestCluster> {
  const ownPostgres = o.postgres === undefined;
  const postgres = o.postgres ?? (await startPostgres());
  const nodes: ClusterNode[] = [];
  try {
    const { url } = await createTestDatabase(postgres);
    const first = join(o.dir, 'node1');
    const init = await runCli(['init', '--data', first, ...LISTEN, '--database-url', url, ...(o.initArgs ?? [])], o.env);
    if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`);
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)?.[1];
    if (!adminKey) throw new Error('init printed no admin key');
    const pin = (await readFile(join(first, 'tls', 'api.pin'), 'utf8')).trim();
    // Before the join tokens: they seal node 1's config.json for the others.
    if (o.config) await patchConfig(join(first, 'config.json'), o.config);
    for (let i = 2; i <= o.nodes; i++) await joinNode(first, join(o.dir, `node${i}`), url, o.env);
    const args = (dir: string) => ['--data', dir, '--log-level', 'warn', ...(o.brokerArgs ?? [])];
    // One at a time: the first start runs the migrations.
    for (let i = 1; i <= o.nodes; i++) {
      const dataDir = join(o.dir, `node${i}`);
      nodes.push({ dataDir, broker: await spawnBroker(args(dataDir), o.env) });
    }
    return {
      postgres, databaseUrl: url, nodes, adminKey, pin,
      async restart(i, extraArgs = []) {
        const node = nodes[i]!;
        await node.broker.stop();
        node.broker = await spawnBroker([...args(node.dataDir), ...extraArgs], o.env);
        return node.broker;
      },
      async stop() {
        await Promise.all(nodes.map((n) => n.broker.stop('SIGTERM')));
        if (ownPostgres) await postgres.stop();
      },
    };
  } catch (err) {
    await Promise.all(nodes.map((n) => n.broker.stop('SIGKILL')));
    if (ownPostgres) await postgres.stop();
    throw err;
  }
}
