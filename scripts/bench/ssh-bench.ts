/**
 * The SSH data plane, side by side: the embedded gateway (broker/ssh, in a
 * child process of its own so that its memory can be read apart) and a real
 * sshd configured only by the files broker/openssh writes (OpenSSH mode, the
 * conformance suite's sshd driver). The device is the real OpenSSH `ssh`
 * client (`ssh -N -R`), its service a loopback sink/source/echo server in
 * this process; for the idle-tunnel memory phase the devices are ssh2
 * clients with the agent's certificate shim, many in this process.
 *
 *   node --import tsx scripts/bench/ssh-bench.ts [--quick]
 *
 * Needs Linux and root (sshd switches to the tunnel user). Bounded: every
 * phase has a deadline, the whole run stops after 15 minutes, and every ssh,
 * sshd and gateway process it started is killed on the way out (sshd's
 * per-connection children call setsid, so they are found as descendants of
 * the sshd master and killed by pid).
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ssh2 from 'ssh2';
import { certificateAuthHandler } from '../../agent/ssh2-cert-auth.js';
import { formatCertificate, formatPublicKey, generateKeyPair, saveKeyPair, signDeviceCert, type KeyPair, type PortBlock } from '../../ca/index.js';
import { sshdDriver, type SshdGateway } from '../../testkit/conformance/sshd-driver.js';
import { createWorld, type World } from '../../testkit/conformance/world.js';
import { sshArgs } from '../../testkit/ssh-client.js';

const QUICK = process.argv.includes('--quick');
/** Below the ephemeral range (32768-60999 here) and above the broker's default pool (20000-29999). */
const POOL = { first: 30000, last: 32767, perDevice: 2 };
const THROUGHPUT_BYTES = (QUICK ? 64 : 256) * 1024 * 1024;
const THROUGHPUT_RUNS = QUICK ? 1 : 3;
const LATENCY_ROUND_TRIPS = QUICK ? 500 : 3000;
const HANDSHAKES = QUICK ? 20 : 100;
const HANDSHAKE_CONCURRENCY = 4;
const IDLE_STEPS = QUICK ? [50, 200] : [200, 1000];
const IDLE_WAVE = 50;
/** Blocks below this one belong to the lanes (2 x (2 + HANDSHAKES)); the idle phase, one target at a time, uses those above. */
const IDLE_FIRST_BLOCK = 250;
const TOTAL_DEADLINE_MS = 15 * 60_000;
const PHASE_DEADLINE_MS = 5 * 60_000;

// ---------------------------------------------------------------------------
// The embedded gateway, as a child process: `--child-gateway` runs this.

interface ChildHello {
  readonly port: number;
  readonly hostKeyLine: string;
}

async function runChildGateway(): Promise<void> {
  const { createGateway } = await import('../../broker/ssh/index.js');
  const { parsePublicKey } = await import('../../ca/index.js');
  const config = JSON.parse(process.env.CERTUNNEL_BENCH_GATEWAY ?? '{}') as { userCa: string };
  const hostKey = generateKeyPair();
  const silent = (): void => undefined;
  const gateway = createGateway({
    hostKey,
    userCaKeys: [parsePublicKey(config.userCa)],
    portPool: POOL,
    isRevoked: () => false,
    clock: () => new Date(),
    audit: silent,
    logger: { info: silent, warn: silent, error: silent },
    // Every device connects from 127.0.0.1 here: lift the per-source bucket
    // (default 100 at once, then 10/s) and the unauthenticated cap.
    limits: { perIpBurst: 100_000, perIpRatePerSecond: 100_000, maxUnauthenticated: 10_000 },
  });
  const { port } = await gateway.listen(0, '127.0.0.1');
  const gc = (globalThis as { gc?: () => void }).gc;
  process.on('message', (msg: { type: string }) => {
    if (msg.type === 'settle') {
      gc?.();
      gc?.();
      setTimeout(() => process.send?.({ type: 'settled', stats: gateway.stats() }), 300);
    }
  });
  process.on('disconnect', () => void gateway.close().finally(() => process.exit(0)));
  process.send?.({ type: 'hello', port, hostKeyLine: formatPublicKey(hostKey.publicKey) } satisfies ChildHello & { type: string });
}

// ---------------------------------------------------------------------------
// Processes and memory

const started = new Set<ChildProcess>();
/** Every sshd pid seen (master and per-connection children), for the final sweep. */
const sshdPids = new Set<number>();

/** Pids of PID's descendants, from /proc/<pid>/stat (sshd's per-connection children are in other sessions, not other trees). */
async function descendants(root: number): Promise<number[]> {
  const parent = new Map<number, number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const m = /\) \S (\d+)/.exec(stat);
    if (m) parent.set(Number(name), Number(m[1]));
  }
  const out: number[] = [];
  const frontier = [root];
  while (frontier.length > 0) {
    const p = frontier.pop()!;
    for (const [child, ppid] of parent) {
      if (ppid === p) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}

interface Memory {
  readonly rssKiB: number;
  readonly pssKiB: number;
  readonly processes: number;
}

async function memoryOf(pids: readonly number[]): Promise<Memory> {
  let rssKiB = 0;
  let pssKiB = 0;
  let processes = 0;
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(status);
    const pss = /^Pss:\s+(\d+) kB/m.exec(rollup);
    if (!rss || !pss) continue;
    rssKiB += Number(rss[1]);
    pssKiB += Number(pss[1]);
    processes += 1;
  }
  return { rssKiB, pssKiB, processes };
}

// ---------------------------------------------------------------------------
// The device's services (loopback, in this process)

interface Services {
  /** Counts what it receives; resolves the waiter when a connection ends. */
  readonly sink: number;
  /** Sends THROUGHPUT_BYTES on every connection, then ends. */
  readonly source: number;
  readonly echo: number;
  nextSinkEnd(): Promise<number>;
  close(): Promise<void>;
}

const CHUNK = randomBytes(1024 * 1024);

function writeBytes(socket: Socket, total: number): void {
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!socket.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        socket.once('drain', pump);
        return;
      }
    }
    socket.end();
  };
  pump();
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

async function startServices(): Promise<Services> {
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  let waiter: ((bytes: number) => void) | undefined;
  const sink = createServer((s) => {
    track(s);
    let bytes = 0;
    s.on('data', (c: Buffer) => (bytes += c.length));
    s.on('end', () => {
      s.end();
      waiter?.(bytes);
    });
  });
  const source = createServer((s) => {
    track(s);
    writeBytes(s, THROUGHPUT_BYTES);
  });
  const echo = createServer((s) => {
    track(s);
    s.setNoDelay(true);
    s.pipe(s);
  });
  const servers = [sink, source, echo];
  const [sinkPort, sourcePort, echoPort] = [await listen(sink), await listen(source), await listen(echo)];
  return {
    sink: sinkPort!,
    source: sourcePort!,
    echo: echoPort!,
    nextSinkEnd: () => new Promise((resolve) => (waiter = resolve)),
    close: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((srv) => new Promise<void>((resolve) => srv.close(() => resolve()))));
    },
  };
}

// ---------------------------------------------------------------------------
// Devices

interface Target {
  readonly name: string;
  readonly port: number;
  readonly knownHosts: string;
  readonly hostKeyCheck: (key: Buffer) => boolean;
  /** Server-side memory now. */
  memory(): Promise<Memory>;
}

interface DeviceFiles {
  readonly key: KeyPair;
  readonly certLine: string;
  readonly keyPath: string;
  readonly certPath: string;
  readonly block: PortBlock;
}

let serial = 1n;

async function device(dir: string, world: World, block: PortBlock, write: boolean): Promise<DeviceFiles> {
  const key = generateKeyPair();
  const s = ++serial;
  const cert = signDeviceCert({ ca: world.userCa, publicKey: key.publicKey, deviceId: `bench${s}`, ports: block, serial: s, now: new Date(), validitySeconds: 7200 });
  const keyPath = join(dir, `dev-${s}`);
  const certPath = `${keyPath}-cert.pub`;
  const certLine = formatCertificate(cert);
  if (write) {
    await saveKeyPair(keyPath, key);
    await writeFile(certPath, `${certLine}\n`);
  }
  return { key, certLine, keyPath, certPath, block };
}

function blockAt(i: number): PortBlock {
  const first = POOL.first + i * POOL.perDevice;
  if (first + POOL.perDevice - 1 > POOL.last) throw new Error('bench pool exhausted');
  return { first, last: first + POOL.perDevice - 1 };
}

interface SshTunnel {
  readonly child: ChildProcess;
  /** ms from spawn to the last "remote forward success". */
  readonly boundAfterMs: number;
  readonly stderr: string;
  stop(): Promise<void>;
}

/** `ssh -v -N -R …` until every forward is confirmed; rejects if ssh exits first. */
function openTunnel(target: Target, dev: DeviceFiles, forwards: ReadonlyArray<[port: number, to: number]>, extra: readonly string[] = []): Promise<SshTunnel> {
  const args = ['-v', '-N', ...sshArgs({ port: target.port, knownHosts: target.knownHosts, identity: dev }), '-o', 'ExitOnForwardFailure=yes', ...extra];
  for (const [port, to] of forwards) args.push('-R', `127.0.0.1:${port}:127.0.0.1:${to}`);
  args.push('127.0.0.1');
  const t0 = performance.now();
  const child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  started.add(child);
  child.once('close', () => started.delete(child));
  let stderr = '';
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('close', () => resolve());
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ssh did not bind within 15 s: ${stderr.split('\n').slice(-3).join(' | ')}`));
    }, 15_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
      if ((stderr.match(/^debug1: remote forward success for: /gm)?.length ?? 0) >= forwards.length) {
        clearTimeout(timer);
        resolve({ child, boundAfterMs: performance.now() - t0, stderr, stop });
      }
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`ssh exited ${code}: ${stderr.split('\n').filter((l) => !l.startsWith('debug')).slice(-3).join(' | ')}`));
    });
  });
}

function negotiated(stderr: string): { kex: string; cipher: string } {
  return {
    kex: /^debug1: kex: algorithm: (\S+)/m.exec(stderr)?.[1] ?? '?',
    cipher: /^debug1: kex: server->client cipher: (\S+)/m.exec(stderr)?.[1] ?? '?',
  };
}

// ---------------------------------------------------------------------------
// Measurements

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function toDevice(port: number, services: Services): Promise<number> {
  const ended = services.nextSinkEnd();
  const t0 = performance.now();
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.once('connect', () => writeBytes(socket, THROUGHPUT_BYTES));
  socket.resume();
  const bytes = await ended;
  const seconds = (performance.now() - t0) / 1000;
  socket.destroy();
  if (bytes !== THROUGHPUT_BYTES) throw new Error(`sink got ${bytes} of ${THROUGHPUT_BYTES} bytes`);
  return bytes / 1e6 / seconds;
}

function fromDevice(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let bytes = 0;
    const socket = connect(port, '127.0.0.1');
    socket.on('data', (c: Buffer) => (bytes += c.length));
    socket.once('error', reject);
    socket.once('end', () => {
      socket.destroy();
      if (bytes !== THROUGHPUT_BYTES) return reject(new Error(`got ${bytes} of ${THROUGHPUT_BYTES} bytes`));
      resolve(bytes / 1e6 / ((performance.now() - t0) / 1000));
    });
  });
}

interface Throughput {
  readonly cipher: string;
  readonly toDevice: number;
  readonly fromDevice: number;
}

/** One target and the blocks it may use outside the idle phase (both targets run at once, so they never share a block). */
interface Lane {
  readonly target: Target;
  /** First block index of this lane: +0 throughput, +1 latency, +2.. handshakes. */
  readonly offset: number;
}

/**
 * Single-stream throughput, both targets alternating run by run (the
 * machine's other load then hits both alike): one `ssh -N -R` per target,
 * one port to the sink, one from the source; the median of the runs.
 */
async function measureThroughput(lanes: readonly Lane[], world: World, dir: string, services: Services, cipher: string | undefined): Promise<Throughput[]> {
  const tunnels: SshTunnel[] = [];
  try {
    const devs = await Promise.all(lanes.map((lane) => device(dir, world, blockAt(lane.offset), true)));
    for (const [i, lane] of lanes.entries()) {
      const dev = devs[i]!;
      tunnels.push(await openTunnel(lane.target, dev, [[dev.block.first, services.sink], [dev.block.last, services.source]], cipher ? ['-c', cipher] : []));
    }
    const to: number[][] = lanes.map(() => []);
    const from: number[][] = lanes.map(() => []);
    for (let run = 0; run < THROUGHPUT_RUNS; run++) {
      for (const i of lanes.keys()) to[i]!.push(await toDevice(devs[i]!.block.first, services));
      for (const i of lanes.keys()) from[i]!.push(await fromDevice(devs[i]!.block.last));
    }
    return lanes.map((_, i) => ({ cipher: negotiated(tunnels[i]!.stderr).cipher, toDevice: median(to[i]!), fromDevice: median(from[i]!) }));
  } finally {
    await Promise.all(tunnels.map((t) => t.stop()));
  }
}

/** 64-byte round trips through each target's tunnel to the echo service, alternating in rounds of 100. */
async function measureLatency(lanes: readonly Lane[], world: World, dir: string, services: Services): Promise<Array<{ p50: number; p99: number }>> {
  const tunnels: SshTunnel[] = [];
  const sockets: Socket[] = [];
  try {
    for (const lane of lanes) {
      const dev = await device(dir, world, blockAt(lane.offset + 1), true);
      tunnels.push(await openTunnel(lane.target, dev, [[dev.block.first, services.echo]]));
      const socket = connect(dev.block.first, '127.0.0.1');
      socket.setNoDelay(true);
      sockets.push(socket);
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
    }
    const message = randomBytes(64);
    const roundTrip = (socket: Socket): Promise<number> => {
      const t0 = performance.now();
      return new Promise((resolve) => {
        let got = 0;
        const onData = (c: Buffer): void => {
          got += c.length;
          if (got >= message.length) {
            socket.off('data', onData);
            resolve(performance.now() - t0);
          }
        };
        socket.on('data', onData);
        socket.write(message);
      });
    };
    const samples: number[][] = lanes.map(() => []);
    for (const socket of sockets) for (let i = 0; i < 100; i++) await roundTrip(socket); // warm-up
    for (let round = 0; round < LATENCY_ROUND_TRIPS / 100; round++) {
      for (const [i, socket] of sockets.entries()) for (let k = 0; k < 100; k++) samples[i]!.push(await roundTrip(socket));
    }
    return samples.map((xs) => {
      const sorted = [...xs].sort((a, b) => a - b);
      return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
    });
  } finally {
    for (const socket of sockets) socket.destroy();
    await Promise.all(tunnels.map((t) => t.stop()));
  }
}

interface Handshakes {
  readonly perSecond: number;
  readonly medianMs: number;
  readonly kex: string;
}

/**
 * Full `ssh -N -R` connects, each device with its own certificate and block,
 * HANDSHAKE_CONCURRENCY at a time, timed from spawn until the server
 * confirmed the forward; the targets alternate in rounds of 10 and each
 * one's rate is its connects over the time its own rounds took.
 */
async function measureHandshakes(lanes: readonly Lane[], world: World, dir: string, services: Services, extra: readonly string[]): Promise<Handshakes[]> {
  const devices = await Promise.all(
    lanes.map((lane) => Promise.all(Array.from({ length: HANDSHAKES }, (_, i) => device(dir, world, blockAt(lane.offset + 2 + i), true)))),
  );
  const connectMs: number[][] = lanes.map(() => []);
  const seconds: number[] = lanes.map(() => 0);
  const kex: string[] = lanes.map(() => '?');
  const ROUND = 10;
  for (let first = 0; first < HANDSHAKES; first += ROUND) {
    for (const [l, lane] of lanes.entries()) {
      const round = devices[l]!.slice(first, first + ROUND);
      let next = 0;
      const t0 = performance.now();
      const worker = async (): Promise<void> => {
        while (next < round.length) {
          const dev = round[next++]!;
          const tunnel = await openTunnel(lane.target, dev, [[dev.block.first, services.echo]], extra);
          connectMs[l]!.push(tunnel.boundAfterMs);
          kex[l] = negotiated(tunnel.stderr).kex;
          await tunnel.stop();
        }
      };
      await Promise.all(Array.from({ length: HANDSHAKE_CONCURRENCY }, worker));
      seconds[l]! += (performance.now() - t0) / 1000;
    }
  }
  return lanes.map((_, l) => ({ perSecond: HANDSHAKES / seconds[l]!, medianMs: median(connectMs[l]!), kex: kex[l]! }));
}

interface IdleResult {
  readonly tunnels: number;
  /** Per tunnel, over the baseline with one tunnel. */
  readonly rssKiB: number;
  readonly pssKiB: number;
  readonly processes: number;
}

/** ssh2 clients (agent shim), each bound to its own block, IDLE_WAVE connecting at a time; memory at each step of IDLE_STEPS. */
async function measureIdle(target: Target, world: World, dir: string, services: Services): Promise<IdleResult[]> {
  const clients: ssh2.Client[] = [];
  const connectOne = async (i: number): Promise<void> => {
    const dev = await device(dir, world, blockAt(IDLE_FIRST_BLOCK + i), false);
    const client = new ssh2.Client();
    clients.push(client);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`idle tunnel ${i}: no answer in 60 s`)), 60_000);
      client.on('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`idle tunnel ${i}: ${err.message}`));
      });
      client.on('tcp connection', (_info, accept) => {
        const ch = accept();
        const s = connect(services.echo, '127.0.0.1');
        s.on('error', () => ch.close());
        ch.pipe(s).pipe(ch);
      });
      client.once('ready', () =>
        client.forwardIn('127.0.0.1', dev.block.first, (err) => {
          clearTimeout(timer);
          if (err) reject(new Error(`idle tunnel ${i}: forward refused: ${err.message}`));
          else resolve();
        }),
      );
      client.connect({
        host: '127.0.0.1',
        port: target.port,
        username: 'tunnel',
        hostVerifier: target.hostKeyCheck,
        authHandler: certificateAuthHandler(client, { username: 'tunnel', key: dev.key, certificate: dev.certLine }),
        readyTimeout: 60_000,
      });
    });
  };
  const openUpTo = async (n: number): Promise<void> => {
    let i = clients.length;
    const worker = async (): Promise<void> => {
      while (i < n) await connectOne(i++);
    };
    await Promise.all(Array.from({ length: IDLE_WAVE }, worker));
  };
  try {
    await openUpTo(1); // what every connection shares (code, crypto contexts) is not counted
    const base = await target.memory();
    const results: IdleResult[] = [];
    for (const n of IDLE_STEPS) {
      await openUpTo(n);
      const m = await target.memory();
      results.push({ tunnels: n, rssKiB: (m.rssKiB - base.rssKiB) / (n - 1), pssKiB: (m.pssKiB - base.pssKiB) / (n - 1), processes: m.processes });
    }
    return results;
  } finally {
    for (const c of clients) c.end();
    await new Promise((r) => setTimeout(r, 1000));
    for (const c of clients) c.destroy();
  }
}

// ---------------------------------------------------------------------------
// The two targets

async function startEmbedded(world: World, dir: string): Promise<Started> {
  const child = fork(fileURLToPath(import.meta.url), ['--child-gateway'], {
    execArgv: ['--import', 'tsx', '--expose-gc'],
    env: { ...process.env, CERTUNNEL_BENCH_GATEWAY: JSON.stringify({ userCa: formatPublicKey(world.userCa.publicKey) }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  started.add(child);
  const hello = await new Promise<ChildHello>((resolve, reject) => {
    child.once('message', (m) => resolve(m as ChildHello));
    child.once('exit', (code) => reject(new Error(`gateway child exited ${code}`)));
  });
  const knownHosts = join(dir, `known_hosts.gateway-${hello.port}`);
  await writeFile(knownHosts, `[127.0.0.1]:${hello.port} ${hello.hostKeyLine}\n`);
  const hostBlob = Buffer.from(hello.hostKeyLine.split(' ')[1]!, 'base64');
  return {
    target: {
      name: 'embedded gateway',
      port: hello.port,
      knownHosts,
      hostKeyCheck: (key) => key.equals(hostBlob),
      async memory() {
        await new Promise<void>((resolve) => {
          child.once('message', () => resolve());
          child.send({ type: 'settle' });
        });
        return memoryOf([child.pid!]);
      },
    },
    stop: async () => {
      const exited = new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
      child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function startOpenssh(world: World): Promise<Started> {
  // MaxStartups: sshd's default 10:30:100 drops connections that are still
  // unauthenticated beyond 10; the idle phase connects IDLE_WAVE at a time.
  const gateway: SshdGateway = await sshdDriver({ extraConfig: ['MaxStartups 200:30:400'] }).start(world);
  const master = gateway.masterPid;
  sshdPids.add(master);
  return {
    target: {
      name: 'sshd (OpenSSH mode)',
      port: gateway.target.port,
      knownHosts: world.knownHostsPath,
      hostKeyCheck: () => true, // ssh2 negotiates no host certificate; the ssh client checks the host CA
      async memory() {
        const pids = [master, ...(await descendants(master))];
        for (const pid of pids) sshdPids.add(pid);
        return memoryOf(pids);
      },
    },
    stop: async () => {
      for (const pid of await descendants(master)) sshdPids.add(pid);
      await gateway.stop();
    },
  };
}

// ---------------------------------------------------------------------------

interface ModeResult {
  readonly name: string;
  readonly throughput: Throughput[];
  readonly latency: { p50: number; p99: number };
  readonly handshakes: Handshakes;
  readonly handshakesCurve: Handshakes;
  readonly idle: IdleResult[];
}

function phase<T>(name: string, run: () => Promise<T>): Promise<T> {
  process.stderr.write(`  ${name}…\n`);
  return Promise.race([
    run(),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${name}: over ${PHASE_DEADLINE_MS / 1000} s`)), PHASE_DEADLINE_MS).unref()),
  ]);
}

/** Waits until no idle-phase port is listening (the sessions of the last target's idle clients are gone). */
async function waitIdlePortsFree(n: number): Promise<void> {
  const probe = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
  for (let i = 0; i < 100; i++) {
    const busy = await Promise.all(Array.from({ length: n }, (_, k) => probe(blockAt(IDLE_FIRST_BLOCK + k).first)));
    if (!busy.some(Boolean)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('idle-phase ports stayed busy after their clients ended');
}

type Started = { target: Target; stop(): Promise<void> };

/**
 * Both targets up at once; every measurement alternates between them. The
 * idle phase runs one target at a time, each from FOR_IDLE: a fresh gateway
 * process, so that memory the throughput phase left in its heap is not
 * reused by the idle tunnels and hidden from the RSS delta.
 */
async function runBench(targets: readonly Target[], forIdle: ReadonlyArray<() => Promise<Started>>, world: World, dir: string, services: Services): Promise<ModeResult[]> {
  const lanes: Lane[] = targets.map((target, i) => ({ target, offset: i * (2 + HANDSHAKES) }));
  const throughput = [
    await phase('throughput, default cipher', () => measureThroughput(lanes, world, dir, services, undefined)),
    await phase('throughput, aes128-gcm', () => measureThroughput(lanes, world, dir, services, 'aes128-gcm@openssh.com')),
  ];
  const latency = await phase('latency', () => measureLatency(lanes, world, dir, services));
  const handshakes = await phase('handshakes, default kex', () => measureHandshakes(lanes, world, dir, services, []));
  const handshakesCurve = await phase('handshakes, curve25519-sha256', () => measureHandshakes(lanes, world, dir, services, ['-o', 'KexAlgorithms=curve25519-sha256']));
  const idle: IdleResult[][] = [];
  for (const start of forIdle) {
    const { target, stop } = await start();
    try {
      idle.push(await phase(`idle tunnels, ${target.name} (${IDLE_STEPS.join(', ')})`, () => measureIdle(target, world, dir, services)));
    } finally {
      await stop();
    }
    await waitIdlePortsFree(IDLE_STEPS.at(-1)!);
  }
  return targets.map((target, i) => ({
    name: target.name,
    throughput: throughput.map((t) => t[i]!),
    latency: latency[i]!,
    handshakes: handshakes[i]!,
    handshakesCurve: handshakesCurve[i]!,
    idle: idle[i]!,
  }));
}

function goal(met: boolean, text: string): string {
  return `${text} ${met ? 'met' : 'MISSED'}`;
}

function report(gw: ModeResult, sshd: ModeResult): string {
  const rows: string[][] = [['metric', gw.name, sshd.name, 'gateway / sshd', 'goal']];
  const mb = (x: number): string => `${x.toFixed(0)} MB/s`;
  const ratio = (a: number, b: number): string => `${((100 * a) / b).toFixed(0)}%`;
  for (let i = 0; i < gw.throughput.length; i++) {
    const g = gw.throughput[i]!;
    const s = sshd.throughput[i]!;
    const label = g.cipher === s.cipher ? g.cipher : `${g.cipher} / ${s.cipher}`;
    rows.push([`throughput to device, ${label}`, mb(g.toDevice), mb(s.toDevice), ratio(g.toDevice, s.toDevice), goal(g.toDevice >= s.toDevice / 2, '>= 50%')]);
    rows.push([`throughput from device, ${label}`, mb(g.fromDevice), mb(s.fromDevice), ratio(g.fromDevice, s.fromDevice), goal(g.fromDevice >= s.fromDevice / 2, '>= 50%')]);
  }
  const ms = (x: number): string => `${x.toFixed(3)} ms`;
  rows.push(['latency p50, 64-byte echo', ms(gw.latency.p50), ms(sshd.latency.p50), ratio(gw.latency.p50, sshd.latency.p50), '']);
  rows.push(['latency p99, 64-byte echo', ms(gw.latency.p99), ms(sshd.latency.p99), ratio(gw.latency.p99, sshd.latency.p99), '']);
  for (const [label, g, s] of [
    ['default kex', gw.handshakes, sshd.handshakes],
    ['curve25519-sha256', gw.handshakesCurve, sshd.handshakesCurve],
  ] as const) {
    const kex = g.kex === s.kex ? g.kex : `${g.kex} / ${s.kex}`;
    rows.push([`handshakes/s (${label}: ${kex})`, `${g.perSecond.toFixed(1)}/s`, `${s.perSecond.toFixed(1)}/s`, ratio(g.perSecond, s.perSecond), '']);
    rows.push([`  median connect-to-bound`, ms(g.medianMs), ms(s.medianMs), '', '']);
  }
  for (let i = 0; i < gw.idle.length; i++) {
    const g = gw.idle[i]!;
    const s = sshd.idle[i]!;
    rows.push([`memory per idle tunnel @${g.tunnels}, RSS`, `${g.rssKiB.toFixed(0)} KiB`, `${s.rssKiB.toFixed(0)} KiB (${s.processes} procs)`, ratio(g.rssKiB, s.rssKiB), '']);
    rows.push([`memory per idle tunnel @${g.tunnels}, PSS`, `${g.pssKiB.toFixed(0)} KiB`, `${s.pssKiB.toFixed(0)} KiB`, ratio(g.pssKiB, s.pssKiB), goal(g.pssKiB <= s.pssKiB / 10, '<= 10%')]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => `| ${r.map((x, c) => x.padEnd(widths[c]!)).join(' | ')} |`).join('\n');
}

async function main(): Promise<void> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) throw new Error('needs Linux and root (sshd switches to the tunnel user)');
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-ssh-bench-'));
  await chmod(dir, 0o755); // sshd reads the principals files as the tunnel user
  const services = await startServices();
  const deadline = setTimeout(() => {
    process.stderr.write('ssh-bench: over the total deadline, stopping\n');
    void cleanup(dir, services).finally(() => process.exit(2));
  }, TOTAL_DEADLINE_MS);
  deadline.unref();
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void cleanup(dir, services).finally(() => process.exit(130)));
  const stops: Array<() => Promise<void>> = [];
  try {
    const blocks = Math.floor((POOL.last - POOL.first + 1) / POOL.perDevice);
    const world = await createWorld(dir, { first: POOL.first, blocks, perDevice: POOL.perDevice });
    const embedded = await startEmbedded(world, dir);
    stops.push(embedded.stop);
    const openssh = await startOpenssh(world);
    stops.push(openssh.stop);
    const load = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    const [gw, sshd] = await runBench(
      [embedded.target, openssh.target],
      [() => startEmbedded(world, dir), async () => ({ target: openssh.target, stop: async () => undefined })],
      world,
      dir,
      services,
    );
    const cpu = (await readFile('/proc/cpuinfo', 'utf8')).match(/^model name\s*:\s*(.*)$/m)?.[1] ?? '?';
    const sshV = await new Promise<string>((resolve) => {
      const c = spawn('ssh', ['-V'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let out = '';
      c.stderr.on('data', (d: Buffer) => (out += d.toString()));
      c.on('close', () => resolve(out.trim()));
    });
    process.stdout.write(`\nssh-bench: ${process.version}, ${sshV}, ${cpu}, ${(await readdir('/sys/devices/system/cpu')).filter((n) => /^cpu\d+$/.test(n)).length} CPUs\n`);
    process.stdout.write(
      `throughput: ${THROUGHPUT_BYTES / 1024 / 1024} MiB per transfer, median of ${THROUGHPUT_RUNS}; latency: ${LATENCY_ROUND_TRIPS} round trips on one connection; ` +
        `handshakes: ${HANDSHAKES} full \`ssh -N -R\` connects (certificate auth), ${HANDSHAKE_CONCURRENCY} at a time, spawn to "remote forward success"; ` +
        `memory: ssh2 clients (agent shim) holding one bound idle forward each, over a baseline with one tunnel; gateway = its process, sshd = master + every per-connection process (RSS summed, PSS from smaps_rollup summed)\n\n`,
    );
    process.stdout.write(`${report(gw!, sshd!)}\n`);
    const loadAfter = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    process.stdout.write(`\nload average before: ${load}, after: ${loadAfter}\n`);
  } finally {
    for (const stop of stops.reverse()) await stop().catch((err: unknown) => process.stderr.write(`stop: ${String(err)}\n`));
    await cleanup(dir, services);
  }
}

let cleaned: Promise<void> | undefined;

function cleanup(dir: string, services: Services): Promise<void> {
  cleaned ??= (async () => {
    for (const child of started) child.kill('SIGKILL');
    // By the pids recorded (and whatever the recorded ones forked since), and
    // only if each is still an sshd (a pid may have been reused).
    for (const pid of [...sshdPids]) for (const child of await descendants(pid)) sshdPids.add(child);
    for (const pid of sshdPids) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.startsWith('sshd') || cmdline.startsWith('/usr/sbin/sshd')) process.kill(pid, 'SIGKILL');
    }
    await services.close();
    await rm(dir, { recursive: true, force: true });
  })();
  return cleaned;
}

if (process.argv.includes('--child-gateway')) {
  await runChildGateway();
} else {
  await main();
}
