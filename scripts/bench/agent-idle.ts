/**
 * What one idle agent costs: resident memory (RSS) and CPU of an agent
 * process holding a connected tunnel for a minute, per transport. For the
 * openssh transport the ssh child is counted too (agent + ssh).
 *
 * The agent runs as a device runs it: the CLI bundled to plain JavaScript
 * (esbuild, as `npm run build` would compile it), on plain node, without
 * tsx's loader; and again from an entry that loads only the agent's
 * commands. --tsx measures the source under tsx instead.
 * The broker (embedded gateway) runs in this process and is not measured.
 *
 * Usage: node --import tsx scripts/bench/agent-idle.ts [--seconds 60] [--transport ssh2|openssh] [--tsx] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { enrollDevice } from '../../agent/enroll.js';
import { withBroker } from '../../testkit/broker.js';
import { REPO_ROOT } from '../../testkit/cli.js';
import { startDeviceService } from '../../testkit/gateway.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const SECONDS = Number(arg('--seconds') ?? 60);
const TRANSPORTS = (arg('--transport') ? [arg('--transport')!] : ['ssh2', 'openssh']) as Array<'ssh2' | 'openssh'>;
const USE_TSX = process.argv.includes('--tsx');
const CLK_TCK = 100; // USER_HZ on Linux

function run(file: string, args: readonly string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

const CACHE = join(REPO_ROOT, 'node_modules', '.cache', 'certunnel-bench');

/** ENTRY as one plain JS file (dependencies stay in node_modules). */
async function bundle(entry: string, name: string): Promise<string> {
  await mkdir(CACHE, { recursive: true });
  const out = join(CACHE, `${name}.mjs`);
  const esbuild = join(REPO_ROOT, 'node_modules', '.bin', 'esbuild');
  await access(esbuild);
  const result = await run(esbuild, [entry, '--bundle', '--platform=node', '--format=esm', '--packages=external', '--target=node20', `--outfile=${out}`, '--log-level=warning']);
  if (result.code !== 0) throw new Error(`esbuild failed: ${result.out}`);
  return out;
}

/**
 * An entry with the agent's commands only: what an agent-only binary would
 * cost (cli/main.ts loads every command group, broker included: knex,
 * sqlite3, koa, prom-client…).
 */
async function agentOnlyEntry(): Promise<string> {
  await mkdir(CACHE, { recursive: true });
  const entry = join(CACHE, 'agent-only.ts');
  await writeFile(entry, [
    "import { Command } from 'commander';",
    `import { registerAgentCommands } from ${JSON.stringify(join(REPO_ROOT, 'cli', 'agent-commands.ts'))};`,
    "const program = new Command('certunnel');",
    'registerAgentCommands(program, process.env);',
    'await program.parseAsync(process.argv);',
    '',
  ].join('\n'));
  return bundle(entry, 'certunnel-agent-only');
}

interface Sample {
  readonly rssKb: number;
  readonly cpuTicks: number;
}

async function sample(pids: readonly number[]): Promise<Sample> {
  let rssKb = 0;
  let cpuTicks = 0;
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    rssKb += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    cpuTicks += Number(fields[11] ?? 0) + Number(fields[12] ?? 0); // utime, stime
  }
  return { rssKb, cpuTicks };
}

async function childPids(pid: number): Promise<number[]> {
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  return children.trim().split(/\s+/).filter(Boolean).map(Number);
}

interface IdleResult {
  readonly transport: string;
  readonly runtime: string;
  readonly seconds: number;
  readonly rssMbAvg: number;
  readonly rssMbMax: number;
  readonly agentRssMb: number;
  readonly sshRssMb: number | null;
  readonly cpuSeconds: number;
  readonly cpuPercent: number;
}

async function measure(transport: 'ssh2' | 'openssh', entry: string | null): Promise<IdleResult> {
  return withBroker(async (b) => {
    const dir = await mkdtemp(join(tmpdir(), 'certunnel-idle-'));
    const svc = await startDeviceService('svc:');
    let child: ChildProcess | undefined;
    try {
      const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
      const stateDir = join(dir, 'state');
      await enrollDevice({ stateDir, broker: { url: b.broker.apiUrl, pin: b.init.apiPin }, token: tokens[0]!.token });
      const cfg = join(dir, 'agent.json');
      await writeFile(cfg, JSON.stringify({ stateDir, transport, services: { ssh: `127.0.0.1:${svc.port}`, http: `127.0.0.1:${svc.port}` } }));
      const args = entry ? [entry, 'agent', 'run', '--config', cfg] : ['--import', 'tsx', join(REPO_ROOT, 'cli', 'main.ts'), 'agent', 'run', '--config', cfg];
      child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let log = '';
      child.stdout!.on('data', (c: Buffer) => (log += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (log += c.toString()));
      const deadline = Date.now() + 30_000;
      while (!log.includes('"event":"connected"')) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the agent did not connect:\n${log}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 2000)); // let start-up settle
      const pid = child.pid!;
      const pids = async (): Promise<number[]> => [pid, ...(await childPids(pid))];
      const first = await sample(await pids());
      const rss: number[] = [];
      let agentRss = 0;
      let sshRss = 0;
      for (let s = 0; s < SECONDS; s++) {
        await new Promise((r) => setTimeout(r, 1000));
        const all = await pids();
        rss.push((await sample(all)).rssKb);
        agentRss = (await sample([pid])).rssKb;
        sshRss = (await sample(all.slice(1))).rssKb;
      }
      const last = await sample(await pids());
      if (!log.includes('"event":"connected"') || log.includes('"event":"tunnel_lost"')) throw new Error(`the tunnel did not stay up:\n${log}`);
      const cpuSeconds = (last.cpuTicks - first.cpuTicks) / CLK_TCK;
      return {
        transport,
        runtime: entry ? (entry.includes('agent-only') ? 'agent-only entry, bundled' : 'certunnel CLI, bundled') : 'certunnel CLI, node + tsx (source)',
        seconds: SECONDS,
        rssMbAvg: Math.round((rss.reduce((a, x) => a + x, 0) / rss.length / 1024) * 10) / 10,
        rssMbMax: Math.round((Math.max(...rss) / 1024) * 10) / 10,
        agentRssMb: Math.round((agentRss / 1024) * 10) / 10,
        sshRssMb: transport === 'openssh' ? Math.round((sshRss / 1024) * 10) / 10 : null,
        cpuSeconds,
        cpuPercent: Math.round((cpuSeconds / SECONDS) * 10_000) / 100,
      };
    } finally {
      child?.kill('SIGTERM');
      await new Promise((r) => (child && child.exitCode === null ? child.once('close', r) : r(null)));
      await svc.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, { logLevel: 'warn' });
}

async function main(): Promise<void> {
  const entries = USE_TSX ? [null] : [await bundle('cli/main.ts', 'certunnel'), await agentOnlyEntry()];
  const results: IdleResult[] = [];
  for (const entry of entries) {
    for (const transport of TRANSPORTS) {
      process.stderr.write(`measuring ${transport} (${entry ?? 'tsx'}) for ${SECONDS} s…\n`);
      results.push(await measure(transport, entry));
    }
  }
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    return;
  }
  for (const r of results) {
    process.stdout.write(
      `${r.transport.padEnd(8)} ${r.runtime.padEnd(26)} ${r.seconds} s idle with a connected tunnel: ` +
        `RSS avg ${r.rssMbAvg} MB, max ${r.rssMbMax} MB${r.sshRssMb !== null ? ` (agent ${r.agentRssMb} MB + ssh ${r.sshRssMb} MB)` : ''}; ` +
        `CPU ${r.cpuSeconds.toFixed(2)} s = ${r.cpuPercent}% of one core\n`,
    );
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`agent-idle: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
