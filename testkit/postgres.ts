/**
 * A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temp
 * directory, listening on a free port on 127.0.0.1 (its unix socket stays
 * inside the directory), with scram-sha-256 and a random password carried
 * by the URL. Debian's server binaries live in /usr/lib/postgresql/<ver>/bin
 * (not on PATH); `.ci/run` installs them. PostgreSQL refuses to run as root,
 * so under root every server binary runs as `nobody` (setpriv) and the
 * directory belongs to it.
 *
 * One cluster per test file, one database per test (`createTestDatabase`).
 * fsync is off: a throwaway cluster only has to survive its processes dying,
 * not the machine (committed rows are in the kernel's page cache).
 *
 * A crashed test leaves nothing behind: an exit handler stops the cluster,
 * and a detached watchdog stops it and removes the directory when the test
 * process is gone without running its handlers (SIGKILL, timeouts).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './net.js';

export interface PostgresCluster {
  /** postgres://certunnel:<password>@127.0.0.1:<port>/postgres (the superuser). */
  readonly url: string;
  readonly port: number;
  /** The cluster's directory (data/, sock/, server.log); gone after stop(). */
  readonly dir: string;
  /** The server log so far, for failure messages. */
  log(): Promise<string>;
  /** `pg_ctl stop -m immediate`, then removes the directory. Idempotent. */
  stop(): Promise<void>;
  /**
   * The database goes away for a while: the server stops, its data kept
   * (fast, not immediate: the test cluster commits asynchronously, and an
   * immediate stop would lose the last commits).
   */
  pause(): Promise<void>;
  /** …and comes back on the same port. */
  resume(): Promise<void>;
}

export interface TestDatabase {
  readonly name: string;
  /** The cluster URL with this database's name. */
  readonly url: string;
  /** DROP DATABASE … WITH (FORCE). */
  drop(): Promise<void>;
}

export interface PostgresOptions {
  /** pg_ctl -t: how long start and stop may take; default 120 s (loaded 2-core box). */
  readonly timeoutSeconds?: number;
}

const SUPERUSER = 'certunnel';
/** The unprivileged account the server runs as when the tests run as root. */
const RUN_AS = 'nobody';

const MISSING =
  'PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: ' +
  "run .ci/run, which installs Debian's postgresql package (or apt-get install postgresql)";

/**
 * The directory of initdb/pg_ctl/postgres: the newest ROOT/<ver>/bin, else
 * `PG_CONFIG --bindir`; throws a message naming .ci/run when neither has them.
 */
export function postgresBinDir(root = '/usr/lib/postgresql', pgConfig = 'pg_config'): string {
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')) && existsSync(join(root, v, 'bin', 'pg_ctl')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions[0] !== undefined) return join(root, versions[0], 'bin');
  const configured = spawnSync(pgConfig, ['--bindir'], { encoding: 'utf8' });
  const bindir = configured.status === 0 ? configured.stdout.trim() : '';
  if (bindir && existsSync(join(bindir, 'initdb')) && existsSync(join(bindir, 'pg_ctl'))) return bindir;
  throw new Error(MISSING);
}

interface Runner {
  /** The command line that runs BIN with ARGS as the server's user. */
  argv(bin: string, args: readonly string[]): [string, string[]];
  /** Owner to give the cluster's directory, or null to keep ours. */
  readonly owner: { uid: number; gid: number } | null;
}

function idOf(flag: '-u' | '-g', user: string): number {
  const result = spawnSync('id', [flag, user], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`PostgreSQL cannot run as root and there is no user ${user} to run it as: ${result.stderr.trim()}`);
  return Number(result.stdout.trim());
}

function runner(): Runner {
  if (process.getuid?.() !== 0) return { argv: (bin, args) => [bin, [...args]], owner: null };
  const uid = idOf('-u', RUN_AS);
  const gid = idOf('-g', RUN_AS);
  return {
    // setpriv: no PAM session, no shell; just the ids.
    argv: (bin, args) => ['setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', bin, ...args]],
    owner: { uid, gid },
  };
}

/** Runs a server binary to completion; rejects with its output on failure. Waits for exit, not for pipes (postgres keeps them). */
function run(r: Runner, bin: string, args: readonly string[], cwd: string): Promise<string> {
  const [command, argv] = r.argv(bin, args);
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LC_ALL: 'C' } });
    const out: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => out.push(chunk));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      const text = Buffer.concat(out).toString('utf8');
      if (code === 0) resolve(text);
      else reject(new Error(`${bin} ${args.join(' ')} failed (${code ?? signal}):\n${text}`));
    });
  });
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A detached shell that outlives us: when our pid is gone it stops the
 * cluster and removes its directory. Killed by stop().
 */
function startWatchdog(stopArgv: [string, string[]], dir: string): number | undefined {
  const stopLine = [stopArgv[0], ...stopArgv[1]].map(shellQuote).join(' ');
  const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ${stopLine} >/dev/null 2>&1; rm -rf ${shellQuote(dir)}`;
  const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
  child.unref();
  return child.pid;
}

export async function startPostgres(options: PostgresOptions = {}): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  const timeout = String(options.timeoutSeconds ?? 120);
  const r = runner();
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-pg-'));
  const data = join(dir, 'data');
  const sock = join(dir, 'sock');
  const logFile = join(dir, 'server.log');
  const pwFile = join(dir, 'pwfile');
  const password = randomBytes(18).toString('hex');
  const pgCtl = join(bin, 'pg_ctl');
  const stopArgv = r.argv(pgCtl, ['stop', '-D', data, '-m', 'immediate', '-w', '-t', timeout]);
  let stopped = false;
  let watchdog: number | undefined;
  // Synchronous: 'exit' handlers cannot await.
  const stopNow = (): void => {
    if (stopped) return;
    stopped = true;
    if (existsSync(join(data, 'postmaster.pid'))) spawnSync(stopArgv[0], stopArgv[1], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
    if (watchdog !== undefined) {
      try {
        process.kill(-watchdog, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  process.once('exit', stopNow);
  try {
    await mkdir(sock);
    await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
    if (r.owner) {
      for (const path of [dir, sock, pwFile]) await chown(path, r.owner.uid, r.owner.gid);
    }
    await run(r, join(bin, 'initdb'), ['-D', data, '-U', SUPERUSER, `--pwfile=${pwFile}`, '--auth=scram-sha-256', '-E', 'UTF8', '--locale=C', '--no-sync'], dir);
    await rm(pwFile);
    const settings = [
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${sock}'`,
      'fsync = off',
      'synchronous_commit = off',
      'full_page_writes = off',
      'max_connections = 200',
    ];
    await writeFile(join(data, 'postgresql.conf'), `${(await readFile(join(data, 'postgresql.conf'), 'utf8')).trimEnd()}\n# certunnel test cluster\n${settings.join('\n')}\n`);
    watchdog = startWatchdog(stopArgv, dir);
    // Another process may take the port between freePort() and the bind: try again.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      try {
        await run(r, pgCtl, ['start', '-D', data, '-l', logFile, '-w', '-t', timeout, '-o', `-p ${port}`], dir);
      } catch (err) {
        const log = await readFile(logFile, 'utf8').catch(() => '');
        if (attempt < 5 && /already in use/i.test(log)) continue;
        throw new Error(`${String(err)}\nserver log:\n${log}`, { cause: err });
      }
      return {
        url: `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/postgres`,
        port,
        dir,
        log: () => readFile(logFile, 'utf8').catch(() => ''),
        async pause() {
          await run(r, pgCtl, ['stop', '-D', data, '-m', 'fast', '-w', '-t', timeout], dir);
        },
        async resume() {
          await run(r, pgCtl, ['start', '-D', data, '-l', logFile, '-w', '-t', timeout, '-o', `-p ${port}`], dir);
        },
        async stop() {
          if (stopped) return;
          if (!existsSync(join(data, 'postmaster.pid'))) {
            stopNow();
            process.removeListener('exit', stopNow);
            return;
          }
          await run(r, pgCtl, ['stop', '-D', data, '-m', 'immediate', '-w', '-t', timeout], dir);
          stopNow();
          process.removeListener('exit', stopNow);
        },
      };
    }
  } catch (err) {
    stopNow();
    process.removeListener('exit', stopNow);
    throw err;
  }
}

/** URL with its database path replaced by NAME. */
export function databaseUrl(clusterUrl: string, name: string): string {
  const url = new URL(clusterUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** A fresh, empty database `t_<random>` in CLUSTER, so that many tests share one cluster. */
export async function createTestDatabase(cluster: Pick<PostgresCluster, 'url'>): Promise<TestDatabase> {
  const name = `t_${randomBytes(8).toString('hex')}`;
  const admin = async (sql: string): Promise<void> => {
    const client = new pg.Client({ connectionString: cluster.url });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  return {
    name,
    url: databaseUrl(cluster.url, name),
    drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}
