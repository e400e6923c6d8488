/**
 * The HTTP data plane in one run, at one fixed concurrency (wrk, keep-alive):
 *
 *   direct        the device's web service on loopback
 *   tunnel        the same through its tunnel alone: 127.0.0.1:<http slot> on
 *                 the broker (embedded gateway, ssh2) → real `ssh -R` → service
 *   broker proxy  http://<device>.<domain> on the broker's API port (bearer
 *                 API key) → the tunnel
 *   nginx static  nginx → the same tunnel port (upstream keepalive, no
 *                 authentication: the hand-written config of the old design)
 *   nginx+auth    nginx with `certunnel proxy nginx-config` (auth_request to
 *                 the broker per request, variable upstream port)
 *
 * Plain HTTP throughout (the broker with api.insecureHttp), so that TLS
 * termination is not what is measured. The broker, the device's ssh, its
 * service, nginx (one worker) and wrk are separate processes; this process
 * only orchestrates. Everything runs on this machine and is torn down at the
 * end (or after --timeout seconds).
 *
 * Usage: npm run bench:proxy [-- --duration 5 --rounds 3 --connections 16 --timeout 300]
 *   --diagnose adds what nginx + auth_request pays per request (a new tunnel
 *   connection per request; the authorize endpoint alone); --only a,b picks
 *   targets by prefix; --profile-broker DIR writes a V8 CPU profile; --tsx runs
 *   the broker from source through tsx instead of a tsc build in .bench/.
 * Needs: wrk, nginx, ssh (OpenSSH client), sshd not needed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiRequest, type EnrollResponse } from '../../api/index.js';
import { encodePrivateKey, formatPublicKey, generateKeyPair, type KeyPair } from '../../ca/index.js';
import { renderNginxConfig } from '../../broker/proxy/nginx-config.js';
import { perRequest } from './proc-usage.js';
import { nginxConfig } from './proxy-nginx-conf.js';
import { isListening } from '../../testkit/net.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const DURATION = arg('duration', 5);
const ROUNDS = arg('rounds', 3);
const CONNECTIONS = arg('connections', 16);
const TIMEOUT = arg('timeout', 300);
const ENTRY = fileURLToPath(new URL('../../cli/main.ts', import.meta.url));
const DOMAIN = 'bench.test';
const DEVICE = 'kiosk-bench';

const children: ChildProcess[] = [];

function track(child: ChildProcess): ChildProcess {
  children.push(child);
  child.on('error', () => undefined);
  return child;
}

const PROFILE = (() => {
  const i = process.argv.indexOf('--profile-broker');
  return i > 0 ? process.argv[i + 1] : undefined;
})();

/** The broker runs as shipped (tsc output) unless --tsx: tsx's transform adds per-closure helpers to hot paths. */
const USE_TSX = process.argv.includes('--tsx');
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const BUILD = join(REPO, '.bench', `proxy-build-${process.pid}`);

/**
 * --pin: the broker host's processes (broker, nginx) on CPU 0, the device's
 * (its ssh client, its web service) and the load generator on CPU 1, as if
 * they were the separate machines they are in production. Then the figures
 * compare what each proxy costs the broker host, not who wins the scheduler.
 */
const PIN = process.argv.includes('--pin');

function pinned(side: 'broker' | 'peer', command: string, args: string[]): [string, string[]] {
  return PIN ? ['taskset', ['-c', side === 'broker' ? '0' : '1', command, ...args]] : [command, args];
}

function cli(args: string[], nodeArgs: string[] = []): ChildProcess {
  const entry = USE_TSX ? ['--import', 'tsx', ENTRY] : [join(BUILD, 'cli', 'main.js')];
  const [cmd, argv] = pinned('broker', process.execPath, [...nodeArgs, ...entry, ...args]);
  return track(spawn(cmd, argv, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
}

function output(child: ChildProcess, until: (text: string) => boolean, label: string, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`${label}: no answer in ${timeoutMs} ms: ${err}`)), timeoutMs);
    child.stdout!.on('data', (c: Buffer) => {
      text += c.toString();
      if (until(text)) {
        clearTimeout(timer);
        resolve(text);
      }
    });
    child.stderr!.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!until(text)) reject(new Error(`${label} exited ${code}: ${err}`));
    });
  });
}

async function waitListening(port: number, label: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await isListening(port))) {
    if (Date.now() > deadline) throw new Error(`${label} is not listening on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = spawnSync(process.execPath, ['-e', "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"]);
    resolve(Number(probe.stdout.toString().trim()));
  });
}

/** The device's web service: a 2-byte body on keep-alive, in its own process. */
const SERVICE = `
const http = require('node:http');
const s = http.createServer((req, res) => { res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' }); res.end('ok'); });
s.keepAliveTimeout = 60000;
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
`;

interface Result {
  readonly target: string;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly errors: string;
  /** CPU microseconds per request, by process (Linux /proc). */
  readonly cpu?: Record<string, number>;
}

const roles = new Map<string, number>();

/** RUN, with what each process spent per request (the cpu record: microseconds by role, system calls by "<role> io"). */
function measured(run: () => Result): Result {
  const { result, cpuMicros, syscalls } = perRequest(roles, 'wrk', run, (r) => r.rps * DURATION);
  const cpu: Record<string, number> = { ...cpuMicros };
  for (const [role, n] of Object.entries(syscalls)) cpu[`${role} io`] = n;
  return { ...result, cpu };
}

/** wrk's latency figures in ms ("812.00us", "1.23ms", "1.02s"). */
function ms(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text.trim());
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'us' ? 0.001 : m[2] === 's' ? 1000 : 1);
}

function wrk(target: string, url: string, headers: string[], seconds: number): Result {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency', ...headers.flatMap((h) => ['-H', h]), url];
  const [cmd, argv] = pinned('peer', 'wrk', args);
  const run = spawnSync(cmd, argv, { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  if (run.status !== 0) throw new Error(`wrk failed for ${target}: ${run.stderr || run.error?.message}`);
  const text = run.stdout;
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1]);
  const p50 = ms(/^\s+50%\s+(\S+)/m.exec(text)?.[1] ?? '');
  const p99 = ms(/^\s+99%\s+(\S+)/m.exec(text)?.[1] ?? '');
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1];
  const socketErrors = /Socket errors: (.*)/.exec(text)?.[1];
  return { target, rps, p50, p99, errors: [non2xx ? `${non2xx} non-2xx` : '', socketErrors ?? ''].filter(Boolean).join('; ') || '-' };
}

/** Builds the broker with tsc into BUILD, unless --tsx. */
async function buildBroker(): Promise<void> {
  if (USE_TSX) return;
  // Inside the repository (.bench/ is ignored by git) so that node_modules resolve; tsc emits even with type errors elsewhere.
  spawnSync(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(REPO, 'tsconfig.build.json'), '--outDir', BUILD], { cwd: REPO, stdio: 'ignore' });
  await readFile(join(BUILD, 'cli', 'main.js')).catch(() => {
    throw new Error('tsc produced no build; run with --tsx');
  });
}

interface Broker {
  readonly apiUrl: string;
  readonly apiPort: number;
  readonly adminKey: string;
  /** The port pool: 10 ports from here. */
  readonly poolFirst: number;
}

/** `certunnel init`, then `certunnel broker` (plain HTTP) until its ready line. */
async function startBroker(dir: string): Promise<Broker> {
  const data = join(dir, 'data');
  // Below the kernel's ephemeral range (32768-): an outgoing connection could hold a port above it.
  const poolFirst = 30000 + Math.floor(Math.random() * 1000) * 2;
  const init = cli(['init', '--data', data, '--domain', DOMAIN, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--insecure-http', '--port-range', `${poolFirst}-${poolFirst + 9}`]);
  const initOut = await output(init, (t) => /ctk_\S+/.test(t), 'init');
  const adminKey = /(ctk_\S+)/.exec(initOut)![1]!;

  // --profile-broker DIR: a V8 CPU profile of the broker (written when it exits).
  const broker = cli(['broker', '--data', data, '--log-level', 'warn'], PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE}`] : []);
  roles.set('broker', broker.pid!);
  const ready = JSON.parse((await output(broker, (t) => t.includes('{"ready":true'), 'broker')).split('\n').find((l) => l.startsWith('{"ready"'))!) as { apiUrl: string; sshPort: number; apiPort: number };
  return { apiUrl: ready.apiUrl, apiPort: ready.apiPort, adminKey, poolFirst };
}

/** An operator API key, and the device enrolled with a fresh key and token. */
async function enrollBenchDevice(broker: Broker): Promise<{ operator: string; key: KeyPair; grant: EnrollResponse }> {
  const admin = { baseUrl: broker.apiUrl, apiKey: broker.adminKey };
  const operator = (await apiRequest<{ key: string }>(admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'bench' })).key;
  const token = (await apiRequest<{ tokens: Array<{ token: string }> }>(admin, 'POST', '/v1/tokens', { count: 1 })).tokens[0]!.token;
  const key = generateKeyPair();
  const grant = await apiRequest<EnrollResponse>({ baseUrl: broker.apiUrl }, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(key.publicKey), name: DEVICE });
  return { operator, key, grant };
}

/** The device's web service (SERVICE) in its own process; its port. */
async function startService(): Promise<number> {
  const service = track(spawn(...pinned('peer', process.execPath, ['-e', SERVICE]), { stdio: ['ignore', 'pipe', 'pipe'] }));
  roles.set('service', service.pid!);
  return Number((await output(service, (t) => /^\d+\n/.test(t), 'device service')).trim());
}

/** The device: OpenSSH's client holding its http slot, forwarded to the service. */
async function startDeviceTunnel(dir: string, key: KeyPair, grant: EnrollResponse, httpSlot: number, servicePort: number): Promise<void> {
  await writeFile(join(dir, 'device'), encodePrivateKey(key), { mode: 0o600 });
  await writeFile(join(dir, 'device-cert.pub'), `${grant.certificate}\n`);
  await writeFile(join(dir, 'known_hosts'), `[127.0.0.1]:${grant.ssh.port} ${grant.ssh.hostKey}\n`);
  const ssh = track(spawn(...pinned('peer', 'ssh', [
    '-F', '/dev/null', '-o', `UserKnownHostsFile=${join(dir, 'known_hosts')}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes',
    '-o', 'IdentitiesOnly=yes', '-o', 'IdentityAgent=none', '-i', join(dir, 'device'), '-o', `CertificateFile=${join(dir, 'device-cert.pub')}`,
    '-o', 'ExitOnForwardFailure=yes', '-p', String(grant.ssh.port), '-l', grant.ssh.username, '-N',
    '-R', `127.0.0.1:${httpSlot}:127.0.0.1:${servicePort}`, '127.0.0.1',
  ]), { stdio: 'ignore' }));
  roles.set('ssh', ssh.pid!);
  await waitListening(httpSlot, 'the tunnel');
  // Presence reaches the proxy through the gateway at once; give the store its write too.
  await new Promise((r) => setTimeout(r, 300));
}

/** nginx, one worker: the static server and the generated (auth_request) one; their ports. */
async function startNginx(dir: string, broker: Broker, httpSlot: number): Promise<{ staticPort: number; authPort: number }> {
  const nginxDir = join(dir, 'nginx');
  await mkdir(join(nginxDir, 'temp'), { recursive: true });
  const staticPort = await freePort();
  const authPort = await freePort();
  const generated = renderNginxConfig({ domain: DOMAIN, brokerUrl: `http://127.0.0.1:${broker.apiPort}`, listenPort: authPort, pool: { first: broker.poolFirst, last: broker.poolFirst + 9, perDevice: 2 } });
  await writeFile(join(nginxDir, 'nginx.conf'), nginxConfig(nginxDir, httpSlot, staticPort, generated));
  const nginxProcess = track(spawn(...pinned('broker', 'nginx', ['-p', nginxDir, '-c', join(nginxDir, 'nginx.conf'), '-e', join(nginxDir, 'error.log'), '-g', 'daemon off;']), { stdio: 'ignore' }));
  await waitListening(staticPort, 'nginx');
  roles.set('nginx', nginxProcess.pid!);
  return { staticPort, authPort };
}

/** A target: its label, URL and request headers. */
type Target = [label: string, url: string, headers: string[]];

/** The targets to measure, --diagnose adding two, --only picking by label prefix. */
function targetsFor(ports: { service: number; httpSlot: number; api: number; static: number; auth: number }, operator: string): Target[] {
  const host = `${DEVICE}.${DOMAIN}`;
  const auth = `Authorization: Bearer ${operator}`;
  const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1]!.split(',') : undefined;
  return ([
    ['direct (loopback)', `http://127.0.0.1:${ports.service}/`, []],
    ['tunnel alone', `http://127.0.0.1:${ports.httpSlot}/`, []],
    ['broker proxy', `http://127.0.0.1:${ports.api}/`, [`Host: ${host}`, auth]],
    ['nginx static -> tunnel', `http://127.0.0.1:${ports.static}/`, [`Host: ${host}`]],
    ['nginx + auth_request', `http://127.0.0.1:${ports.auth}/`, [`Host: ${host}`, auth]],
    // --diagnose: what nginx + auth_request pays per request, piece by piece.
    ...(process.argv.includes('--diagnose')
      ? ([
          ['tunnel, new conn/request', `http://127.0.0.1:${ports.httpSlot}/`, ['Connection: close']],
          ['broker /v1/proxy/authorize', `http://127.0.0.1:${ports.api}/v1/proxy/authorize`, [`X-Forwarded-Host: ${host}`, auth]],
        ] as Target[])
      : []),
  ] as Target[]).filter(([label]) => !only || only.some((o) => label.startsWith(o)));
}

/** Every target checked and warmed up, then measured in ROUNDS; the runs, and per target the medians. */
function measureTargets(targets: readonly Target[]): { runs: Map<string, Result[]>; results: Result[] } {
  // Rounds, each target once per round, medians reported: the machine may be busy with other work,
  // and interleaving spreads that over every target instead of penalising one.
  for (const [label, url, headers] of targets) {
    // Every target must answer the device's "ok" before it is measured.
    const check = spawnSync('curl', ['-sS', '--max-time', '5', ...headers.flatMap((h) => ['-H', h]), url], { encoding: 'utf8' });
    if (check.stdout !== 'ok' && !label.startsWith('broker /v1')) throw new Error(`${label}: expected the device's "ok", got ${JSON.stringify(check.stdout.slice(0, 200))} ${check.stderr}`);
    wrk(label, url, headers, 1); // warm-up: connections, JIT, upstream pools
  }
  const runs = new Map<string, Result[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const [label, url, headers] of targets) {
      const r = measured(() => wrk(label, url, headers, DURATION));
      runs.set(label, [...(runs.get(label) ?? []), r]);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const results: Result[] = targets.map(([label]) => {
    const rs = runs.get(label)!;
    const cpu = Object.fromEntries(Object.keys(rs[0]!.cpu ?? {}).map((role) => [role, median(rs.map((r) => r.cpu![role]!))]));
    return { target: label, rps: median(rs.map((r) => r.rps)), p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)), errors: [...new Set(rs.map((r) => r.errors))].join(' '), cpu };
  });
  return { runs, results };
}

/** The tables (rates and latency, CPU and system calls per request), the goals, and everything as one JSON line. */
function printResults(results: readonly Result[], runs: ReadonlyMap<string, Result[]>): void {
  const byName = new Map(results.map((r) => [r.target, r]));
  const tunnel = byName.get('tunnel alone');
  const proxy = byName.get('broker proxy');
  const nginx = byName.get('nginx static -> tunnel');
  const pad = (s: string, n: number): string => s.padEnd(n);
  const num = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  console.log(`\ncertunnel proxy bench: wrk -t1 -c${CONNECTIONS} -d${DURATION}s x ${ROUNDS} rounds (medians), keep-alive, 2-byte responses, node ${process.version}, broker ${USE_TSX ? 'via tsx' : 'built with tsc'}${PIN ? ', broker+nginx on CPU 0, device+wrk on CPU 1' : ''}`);
  console.log(`${pad('target', 26)}${pad('req/s', 10)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}errors`);
  for (const r of results) console.log(`${pad(r.target, 26)}${pad(num(r.rps, 0), 10)}${pad(num(r.p50), 9)}${pad(num(r.p99), 9)}${r.errors}`);
  // Where the machine's CPU went, per request: the broker host's share (broker + nginx) is what a proxy costs.
  const roleNames = ['broker', 'nginx', 'ssh', 'service', 'wrk'];
  console.log(`\nCPU microseconds per request (medians; /proc utime+stime, 10 ms ticks)\n${pad('target', 26)}${roleNames.map((n) => pad(n, 9)).join('')}total`);
  for (const r of results) {
    const cpu = r.cpu ?? {};
    const total = roleNames.reduce((sum, n) => sum + (cpu[n] ?? 0), 0);
    console.log(`${pad(r.target, 26)}${roleNames.map((n) => pad(num(cpu[n] ?? NaN, 1), 9)).join('')}${num(total, 1)}`);
  }
  console.log(`\nread/write system calls per request\n${pad('target', 26)}${roleNames.slice(0, 4).map((n) => pad(n, 9)).join('')}`);
  for (const r of results) console.log(`${pad(r.target, 26)}${roleNames.slice(0, 4).map((n) => pad(num(r.cpu?.[`${n} io`] ?? NaN, 2), 9)).join('')}`);
  if (proxy && tunnel) console.log(`\nbroker proxy vs tunnel alone: p50 +${num(proxy.p50 - tunnel.p50)} ms (goal <= 1 ms), p99 +${num(proxy.p99 - tunnel.p99)} ms`);
  if (proxy && nginx) console.log(`broker proxy vs nginx static: ${num((proxy.rps / nginx.rps) * 100, 0)}% of nginx's req/s (goal >= 70%)`);
  console.log(JSON.stringify({ connections: CONNECTIONS, durationSeconds: DURATION, rounds: ROUNDS, results, runs: Object.fromEntries(runs) }));
}

async function main(): Promise<void> {
  for (const tool of ['wrk', 'nginx', 'ssh']) {
    if (spawnSync('sh', ['-c', `command -v ${tool} || test -x /usr/sbin/${tool}`]).status !== 0) throw new Error(`${tool} is needed (apt-get install ${tool === 'ssh' ? 'openssh-client' : tool})`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-proxy-bench-'));
  try {
    await buildBroker();
    const broker = await startBroker(dir);
    const { operator, key, grant } = await enrollBenchDevice(broker);
    const httpSlot = grant.ports.first + 1;
    const servicePort = await startService();
    await startDeviceTunnel(dir, key, grant, httpSlot, servicePort);
    const nginx = await startNginx(dir, broker, httpSlot);
    const targets = targetsFor({ service: servicePort, httpSlot, api: broker.apiPort, static: nginx.staticPort, auth: nginx.authPort }, operator);
    const { runs, results } = measureTargets(targets);
    printResults(results, runs);
  } finally {
    for (const c of children.reverse()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    await rm(BUILD, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`proxy-bench: gave up after ${TIMEOUT} s`);
  for (const c of children) c.kill('SIGKILL');
  process.exit(2);
}, TIMEOUT * 1000);
watchdog.unref();

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  },
);
