/**
 * `certunnel node list|token` and `certunnel join`: the broker nodes of a
 * cluster (docs/cluster.md). list goes over the HTTPS API (wire types:
 * api/cluster.ts); token and join work on the host, with a data directory
 * and the database (broker/compose/node-join.ts).
 */
import type { Command } from 'commander';
import type { ListNodesResponse } from '../api/index.js';
import { DATABASE_URL_ENV, DEFAULT_JOIN_TTL_SECONDS, joinCluster, mintJoinToken } from '../broker/compose/index.js';
import { addApiOptions, callApi, type ApiFlags } from './api-connection.js';
import { parseDuration } from './ca-commands.js';
import { CliError, printResult, printTable } from './output.js';

/** The environment variable `join --token` may come from (a token on the command line lands in shell history). */
const JOIN_TOKEN_ENV = 'CERTUNNEL_JOIN_TOKEN';

function registerList(node: Command, env: NodeJS.ProcessEnv): void {
  addApiOptions(node.command('list').description('the broker nodes sharing the store: endpoints, heartbeat, status (up, down, stopped), devices online on each'))
    .action(async (flags: ApiFlags) => {
      const res = await callApi<ListNodesResponse>(flags, env, 'GET', '/v1/nodes');
      if (flags.json) printResult(true, res, '');
      else printTable(res.items, ['id', 'name', 'status', 'sshEndpoint', 'apiUrl', 'devicesOnline', 'heartbeatAt', 'version']);
    });
}

function registerToken(node: Command, env: NodeJS.ProcessEnv): void {
  node.command('token')
    .description("mint a single-use join token on a node's host: the cluster's keys and config, sealed in the database under it")
    .requiredOption('--data <dir>', "this node's data directory")
    .option('--ttl <duration>', 'how long the token can be redeemed, e.g. 30m, 1h, 2d', `${DEFAULT_JOIN_TTL_SECONDS}s`)
    .option('--json', 'print {"id","token","expiresAt"} (errors: {"error":{"code","message"}} on stderr)')
    .action(async (flags: { data: string; ttl: string; json?: boolean }) => {
      const minted = await mintJoinToken({ dataDir: flags.data, ttlSeconds: parseDuration(flags.ttl), env });
      printResult(flags.json, minted, [
        `Join token (single use, expires ${minted.expiresAt}; shown once):`,
        `  ${minted.token}`,
        '',
        'On the new node\'s host:',
        `  CERTUNNEL_JOIN_TOKEN=<the token> certunnel join --data <new dir> --database-url <the cluster's database URL>`,
      ].join('\n'));
    });
}

interface JoinFlags {
  data: string;
  databaseUrl?: string;
  token?: string;
  apiListen?: string;
  sshListen?: string;
  sshPublicHost?: string;
  sshPublicPort?: string;
  apiPublicUrl?: string;
  json?: boolean;
}

function joinOverrides(flags: JoinFlags): Record<string, unknown> {
  const port = flags.sshPublicPort === undefined ? undefined : Number(flags.sshPublicPort);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw new CliError('BAD_ARGUMENT', '--ssh-public-port must be a port number');
  return {
    api: { listen: flags.apiListen, publicUrl: flags.apiPublicUrl },
    ssh: { listen: flags.sshListen, publicHost: flags.sshPublicHost, publicPort: port },
  };
}

function registerJoin(program: Command, env: NodeJS.ProcessEnv): void {
  program.command('join')
    .description("make a new broker node of a cluster from a join token: the cluster's keys and config into a new data directory")
    .requiredOption('--data <dir>', 'the data directory to create (missing or empty)')
    .option('--database-url <url>', `the cluster's PostgreSQL database (or set ${DATABASE_URL_ENV}); kept in DIR/database.url, 0600`)
    .option('--token <token>', `the join token from certunnel node token (or set ${JOIN_TOKEN_ENV}; prefer the environment)`)
    .option('--api-listen <host:port>', "this node's HTTPS API listen address (default: the cluster's config)")
    .option('--ssh-listen <host:port>', "this node's SSH listen address (default: the cluster's config)")
    .option('--ssh-public-host <host>', 'the host devices dial for this node (when it differs from the cluster\'s)')
    .option('--ssh-public-port <port>', 'the port devices dial for this node')
    .option('--api-public-url <url>', "this node's API URL as clients reach it")
    .option('--json', 'print {"nodeId","nodeName","dataDir",…} (errors: {"error":{"code","message"}} on stderr)')
    .action(async (flags: JoinFlags) => {
      const databaseUrl = flags.databaseUrl ?? (env[DATABASE_URL_ENV] || undefined);
      if (!databaseUrl) throw new CliError('BAD_ARGUMENT', `give --database-url (or set ${DATABASE_URL_ENV})`);
      const token = flags.token ?? (env[JOIN_TOKEN_ENV] || undefined);
      if (!token) throw new CliError('BAD_ARGUMENT', `give the join token: --token or ${JOIN_TOKEN_ENV}`);
      const joined = await joinCluster({ dir: flags.data, databaseUrl, token, config: joinOverrides(flags) });
      printResult(flags.json, { ...joined, dataDir: flags.data }, [
        `Joined the cluster as node ${joined.nodeId} (${joined.nodeName}) in ${flags.data}`,
        `  the cluster's keys, TLS identity and config written (${joined.files} files); the join token is used up`,
        '',
        `Next: certunnel broker --data ${flags.data}`,
      ].join('\n'));
    });
}

export function registerNodeCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const node = program.command('node').description('the broker nodes of a cluster: list (admin or operator key), token (on a node\'s host)');
  registerList(node, env);
  registerToken(node, env);
  registerJoin(program, env);
}
