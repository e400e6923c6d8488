/**
 * bench:cluster, part 2: what idle tunnels cost one broker node. A whole
 * broker (broker-child.ts: startBroker on a SQLite data directory, the
 * embedded gateway) in a process of its own; N devices enrolled over its
 * HTTPS API (real keys, c=32); then each device's ssh2 client, in a few
 * worker processes (tunnel-worker.ts), logs in with its certificate, which
 * the gateway checks as it checks any device's (signature, profile, the
 * store's issued-certificate lookup, revocation), binds its forward and
 * stays idle. The broker's RSS and heap are read (after a forced GC) at
 * start, after the enrollments, with every tunnel up, and after an idle
 * period; per tunnel is the growth from "enrolled" over N. A sample of the
 * tunnels is checked end to end (a connection to the forwarded port is
 * echoed by the device), and none may have dropped while idle. What the
 * store says (devices online) and the broker's error log are reported as
 * problems: the figures are still printed, and the run exits non-zero.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { TUNNEL_HOST, type EnrollResponse } from '../../../api/index.js';
import { initDataDir } from '../../../broker/compose/data-dir.js';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../../ca/index.js';
import { assertNoFailures, loadAgent, mintTokens, runLoad, type LoadRun } from '../http-load.js';
import { usageOf } from '../proc-usage.js';
import type { BrokerChildReady, BrokerChildSettled } from './broker-child.js';
import type { OpenedMessage, OpenMessage, StatusMessage, TunnelDevice } from './tunnel-worker.js';

export interface IdleOptions {
  readonly tunnels: number;
  /** Device processes. */
  readonly workers: number;
  /** Logins in flight per device process. */
  readonly inFlight: number;
  readonly idleSeconds: number;
  /** The tunnel ports: PORT_FIRST … PORT_FIRST + tunnels - 1, one per device. */
  readonly portFirst: number;
  readonly concurrency: number;
  readonly dir: string;
  readonly log: (line: string) => void;
}

export interface MemorySample {
  readonly rssKiB: number;
  readonly heapUsedKiB: number;
  readonly heapTotalKiB: number;
  readonly externalKiB: number;
}

export interface IdleResult {
  readonly tunnels: number;
  /** Tunnels that came up (all of them unless a problem says otherwise). */
  readonly up: number;
  /** Login attempts beyond each device's first. */
  readonly retries: number;
  readonly fdLimit: number;
  readonly enroll: LoadRun;
  readonly loginSeconds: number;
  readonly start: MemorySample;
  readonly enrolled: MemorySample;
  readonly allUp: MemorySample;
  /** The broker's open descriptors with every tunnel up. */
  readonly brokerFds: number;
  readonly afterIdle: MemorySample;
  /** (afterIdle - enrolled) / up. */
  readonly perTunnel: MemorySample;
  readonly idleSeconds: number;
  /** Broker CPU while the tunnels idled, % of one core (keepalives, reconciliation). */
  readonly idleCpuPercent: number;
  readonly echoChecked: number;
  readonly devicesRssKiB: number;
  readonly loadBefore: string;
  readonly loadAfter: string;
  /** Devices online in the store with every tunnel up, and after the idle period. */
  readonly onlineInStore: { allUp: number; afterIdle: number };
  /** The broker's error log lines over the run, by message. */
  readonly brokerErrors: Record<string, number>;
  /** What went wrong without stopping the measurement (presence not written, errors logged); the run fails if any. */
  readonly problems: readonly string[];
}

const BROKER_CHILD = fileURLToPath(new URL('./broker-child.ts', import.meta.url));
const TUNNEL_WORKER = fileURLToPath(new URL('./tunnel-worker.ts', import.meta.url));
/** Devices sharing one loopback source address (below the gateway's per-address burst of 100). */
const DEVICES_PER_ADDRESS = 50;

export async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}

/** This process's soft limit on open files (node raises it to the hard limit at start; children inherit it). */
export async function openFileLimit(): Promise<number> {
  const line = /^Max open files\s+(\S+)/m.exec(await readFile('/proc/self/limits', 'utf8'))?.[1];
  return line === 'unlimited' ? Infinity : Number(line);
}

/**
 * The broker holds two descriptors per tunnel (the SSH connection and the
 * forward's listening socket), plus its own (about 40: the store, the
 * listeners, node's own).
 */
export function descriptorsNeeded(tunnels: number): number {
  return 2 * tunnels + 200;
}

function kib(bytes: number): number {
  return Math.round(bytes / 1024);
}

function sampleOf(m: NodeJS.MemoryUsage): MemorySample {
  return { rssKiB: kib(m.rss), heapUsedKiB: kib(m.heapUsed), heapTotalKiB: kib(m.heapTotal), externalKiB: kib(m.external) };
}

/** The next message of TYPE from CHILD; rejects if the child exits first or MS pass. */
function nextMessage<T extends { type: string }>(child: ChildProcess, type: T['type'], ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMessage = (m: { type: string }): void => {
      if (m.type !== type) return;
      done();
      resolve(m as T);
    };
    const onExit = (code: number | null): void => {
      done();
      reject(new Error(`child ${child.pid} exited (${code}) before "${type}"`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no "${type}" from child ${child.pid} within ${ms / 1000} s`));
    }, ms);
    const done = (): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

async function settle(broker: ChildProcess): Promise<BrokerChildSettled> {
  const reply = nextMessage<BrokerChildSettled>(broker, 'settled', 60_000);
  broker.send({ type: 'settle' });
  return reply;
}

/** Connects to PORT on the tunnel host, sends a line, expects it back. */
function echoThrough(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = `probe ${port}\n`;
    const s = connect(port, TUNNEL_HOST);
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`port ${port}: no echo within 30 s`));
    }, 30_000);
    s.on('connect', () => s.write(probe));
    s.on('data', (b: Buffer) => {
      got += b.toString();
      if (got === probe) {
        clearTimeout(timer);
        s.end();
        resolve();
      }
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`port ${port}: ${err.message}`));
    });
  });
}

function localAddressOf(i: number): string {
  const k = Math.floor(i / DEVICES_PER_ADDRESS);
  return `127.77.${Math.floor(k / 250)}.${(k % 250) + 1}`;
}

export async function measureIdleTunnels(o: IdleOptions): Promise<IdleResult> {
  const fdLimit = await openFileLimit();
  if (fdLimit < descriptorsNeeded(o.tunnels)) {
    throw new Error(`open-file limit ${fdLimit} is below the ${descriptorsNeeded(o.tunnels)} the broker needs for ${o.tunnels} tunnels: raise the hard limit (npm run bench:cluster runs ulimit -n 65536, which needs CAP_SYS_RESOURCE; a service: LimitNOFILE=) or pass --tunnels below ${Math.floor((fdLimit - 200) / 2)}`);
  }
  const portLast = o.portFirst + o.tunnels - 1;
  const ephemeralFirst = Number((await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')).trim().split(/\s+/)[0]);
  if (portLast >= ephemeralFirst) throw new Error(`tunnel ports ${o.portFirst}-${portLast} reach the ephemeral range (from ${ephemeralFirst}): lower --port-first or --tunnels`);
  const loadBefore = await loadAverage();
  const init = await initDataDir({
    dir: o.dir,
    config: {
      api: { listen: '127.0.0.1:0' },
      // Logins in flight (workers x inFlight, 16 by default) stay below ssh.maxStartups (128).
      ssh: { listen: '127.0.0.1:0' },
      ports: { first: o.portFirst, last: portLast, perDevice: 1 },
    },
  });
  const broker = fork(BROKER_CHILD, [], { execArgv: ['--expose-gc', '--import', 'tsx'], env: { ...process.env, CERTUNNEL_BENCH_BROKER_DIR: o.dir }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const workers: ChildProcess[] = [];
  const agent = loadAgent(o.concurrency);
  try {
    const ready = await nextMessage<BrokerChildReady>(broker, 'ready', 120_000);
    const start = sampleOf((await settle(broker)).memory);
    o.log(`idle tunnels: broker up (RSS ${Math.round(start.rssKiB / 1024)} MiB); enrolling ${o.tunnels} devices at c=${o.concurrency}…`);

    const tokens = await mintTokens(agent, ready.apiUrl, init.adminKey, o.tunnels);
    const keys: KeyPair[] = tokens.map(() => generateKeyPair());
    const grants: EnrollResponse[] = [];
    const enroll = await runLoad({
      label: `SQLite, 1 node, ${o.tunnels} devices enroll`, agent, urls: [ready.apiUrl], concurrency: o.concurrency, path: '/v1/enroll', expect: 201,
      bodies: tokens.map((token, i) => ({ token, publicKey: formatPublicKey(keys[i]!.publicKey) })),
      answered: (i, json) => (grants[i] = json as EnrollResponse),
    });
    assertNoFailures(enroll);
    agent.destroy();
    const enrolled = sampleOf((await settle(broker)).memory);

    o.log(`idle tunnels: ${o.tunnels} enrolled (${enroll.perSecond.toFixed(0)}/s); opening the tunnels from ${o.workers} device processes…`);
    const shares: TunnelDevice[][] = Array.from({ length: o.workers }, () => []);
    grants.forEach((g, i) => {
      shares[i % o.workers]!.push({
        privateKey: keys[i]!.privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
        certificate: g.certificate,
        port: g.ports.first,
        localAddress: localAddressOf(i),
      });
    });
    const hostKey = grants[0]!.ssh.hostKey;
    for (let w = 0; w < o.workers; w++) workers.push(fork(TUNNEL_WORKER, [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    await Promise.all(workers.map((w) => nextMessage(w, 'hello', 120_000)));
    const loginStarted = performance.now();
    const opened = await Promise.all(workers.map((w, i) => {
      const reply = nextMessage<OpenedMessage>(w, 'opened', 30 * 60_000);
      w.send({ type: 'open', sshPort: ready.sshPort, hostKey, devices: shares[i]!, inFlight: o.inFlight } satisfies OpenMessage);
      return reply;
    }));
    const loginSeconds = (performance.now() - loginStarted) / 1000;
    const problems: string[] = [];
    const failures = opened.flatMap((r) => r.failures);
    const failedPorts = new Set(opened.flatMap((r) => r.failedPorts));
    const retries = opened.reduce((n, r) => n + r.retries, 0);
    const up = opened.reduce((n, r) => n + r.open, 0);
    if (up === 0) throw new Error(`no tunnel came up, e.g.:\n  ${failures.slice(0, 5).join('\n  ')}`);
    if (up !== o.tunnels) problems.push(`${o.tunnels - up} of ${o.tunnels} tunnels did not come up after retries, e.g.: ${failures.slice(0, 3).join('; ')}`);
    const allUpSettled = await settle(broker);
    if (allUpSettled.tunnelsConnected !== up) problems.push(`the gateway counts ${allUpSettled.tunnelsConnected} tunnels, the devices ${up}`);
    const allUp = sampleOf(allUpSettled.memory);
    o.log(`idle tunnels: ${up} up in ${loginSeconds.toFixed(1)} s, ${retries} retries (broker RSS ${Math.round(allUp.rssKiB / 1024)} MiB); checking a sample end to end…`);

    const upPorts = grants.map((g) => g.ports.first).filter((p) => !failedPorts.has(p));
    const sample = Array.from({ length: Math.min(50, upPorts.length) }, (_, k) => upPorts[Math.floor((k * upPorts.length) / Math.min(50, upPorts.length))]!);
    await Promise.all(sample.map(echoThrough));

    o.log(`idle tunnels: idle for ${o.idleSeconds} s…`);
    const cpu0 = usageOf([broker.pid!]).cpuSeconds;
    await new Promise((r) => setTimeout(r, o.idleSeconds * 1000));
    const idleCpuPercent = Math.round(((usageOf([broker.pid!]).cpuSeconds - cpu0) / o.idleSeconds) * 1000) / 10;
    const statuses = await Promise.all(workers.map((w) => {
      const reply = nextMessage<StatusMessage>(w, 'status', 60_000);
      w.send({ type: 'status' });
      return reply;
    }));
    const lost = statuses.reduce((n, s) => n + s.lost, 0);
    const echoed = statuses.reduce((n, s) => n + s.echoedConnections, 0);
    if (lost > 0) problems.push(`${lost} tunnels dropped while idle`);
    if (echoed !== sample.length) throw new Error(`the devices saw ${echoed} forwarded connections, not the ${sample.length} sent`);
    const idleSettled = await settle(broker);
    if (idleSettled.tunnelsConnected !== up - lost) problems.push(`after idling the gateway counts ${idleSettled.tunnelsConnected} tunnels, the devices ${up - lost}`);
    const afterIdle = sampleOf(idleSettled.memory);
    for (const [when, settled, live] of [['with every tunnel up', allUpSettled, up], ['after the idle period', idleSettled, up - lost]] as const) {
      if (settled.onlineInStore !== live) problems.push(`${when} the store shows ${settled.onlineInStore} devices online, the gateway holds ${live} (presence writes lost)`);
    }
    for (const [msg, n] of Object.entries(idleSettled.errors)) problems.push(`the broker logged "${msg}" ${n} times`);
    const per = (f: keyof MemorySample): number => Math.round(((afterIdle[f] - enrolled[f]) / up) * 10) / 10;
    return {
      tunnels: o.tunnels, up, retries, fdLimit, enroll, loginSeconds, start, enrolled, allUp, brokerFds: allUpSettled.fds, afterIdle,
      perTunnel: { rssKiB: per('rssKiB'), heapUsedKiB: per('heapUsedKiB'), heapTotalKiB: per('heapTotalKiB'), externalKiB: per('externalKiB') },
      idleSeconds: o.idleSeconds, idleCpuPercent, echoChecked: sample.length,
      devicesRssKiB: statuses.reduce((n, s) => n + s.rssKiB, 0),
      loadBefore, loadAfter: await loadAverage(),
      onlineInStore: { allUp: allUpSettled.onlineInStore, afterIdle: idleSettled.onlineInStore }, brokerErrors: idleSettled.errors, problems,
    };
  } finally {
    agent.destroy();
    for (const w of workers) if (w.connected) w.disconnect();
    if (broker.connected) broker.disconnect();
    await Promise.all([...workers, broker].map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => {
      const kill = setTimeout(() => c.kill('SIGKILL'), 30_000);
      c.once('exit', () => {
        clearTimeout(kill);
        r(undefined);
      });
    }))));
  }
}
