/**
 * A cluster of real broker processes on one throwaway PostgreSQL: node 1
 * is made with `certunnel init --database-url`, the others from its data
 * directory (`makeNodeDir`: today a copy of node 1's keys and config
 * without its node identity, the stand-in for `certunnel join`), each
 * started with `certunnel broker` on its own ephemeral ports.
 */
import { cp, readFile, rm } from 'node:fs/promises';
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
}

const LISTEN = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0'];

/**
 * Another node's data directory from node 1's: its keys, TLS identity,
 * config and database URL, without the files that make a node itself
 * (node.json, broker.lock, the runtime file, the SQLite file or the one
 * `store migrate` kept, OpenSSH-mode files).
 */
export async function makeNodeDir(from: string, to: string): Promise<void> {
  await cp(from, to, { recursive: true, preserveTimestamps: true });
  for (const f of ['node.json', 'broker.lock', 'broker.runtime.json', 'broker.sqlite', 'broker.sqlite.migrated', 'openssh']) await rm(join(to, f), { recursive: true, force: true });
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
    for (let i = 2; i <= o.nodes; i++) await makeNodeDir(first, join(o.dir, `node${i}`));
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
