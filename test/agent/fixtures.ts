/**
 * Test doubles for the agent's supervisor (a fake clock, dialer, broker API
 * and logger), a state directory enrolled with a throwaway CA, and helpers
 * to run the real `certunnel agent` CLI as a child process and read its
 * JSON log lines.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePrivateKey, formatCertificate, formatPublicKey, generateKeyPair, signDeviceCert, writeFileAtomic, type KeyPair } from '../../ca/index.js';
import type { Clock, AgentLogger } from '../../agent/agent.js';
import { type ApiClientOptions, ApiError, type CertificateGrantWire, type RenewRequest, type SshAddressWire } from '../../api/index.js';
import { ensureStateDir, writeGrant } from '../../agent/state-dir.js';
import { TransportError, type Transport, type TransportErrorCode, type Tunnel, type TunnelEnd, type TunnelSpec } from '../../agent/transport.js';
import type { TestBroker } from '../../testkit/broker.js';
import { cliArgs, REPO_ROOT } from '../../testkit/cli.js';
import { exchange, type DeviceService } from '../../testkit/gateway.js';
import { waitFor } from '../../testkit/ssh-client.js';

/** A clock whose time moves only when the test says so; timers fire in order. */
export class FakeClock implements Clock {
  #now: number;
  #next = 1;
  readonly #timers = new Map<number, { at: number; fn: () => void }>();

  constructor(start = Date.now()) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.#next++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  /** Delays (from now) of the pending timers, soonest first. */
  pending(): number[] {
    return [...this.#timers.values()].map((t) => t.at - this.#now).sort((a, b) => a - b);
  }

  /** Moves time forward by MS, firing due timers in order and letting their work run in between. */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.#timers) if (entry[1].at <= target && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.#timers.delete(next[0]);
      this.#now = Math.max(this.#now, next[1].at);
      next[1].fn();
    }
    this.#now = target;
    await settle();
  }
}

/** Lets pending promise chains and immediate I/O callbacks run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeTunnel implements Tunnel {
  readonly closed: Promise<TunnelEnd>;
  #end!: (end: TunnelEnd) => void;
  open = true;

  constructor(readonly spec: TunnelSpec) {
    this.closed = new Promise((resolve) => {
      this.#end = resolve;
    });
  }

  /** The network or the broker ends the tunnel. */
  drop(code: TransportErrorCode = 'DISCONNECTED'): void {
    this.open = false;
    this.#end({ code, message: `fake ${code}` });
  }

  async close(): Promise<void> {
    this.open = false;
    this.#end({ code: 'CLOSED', message: 'closed by the agent' });
  }
}

/** A dialer that follows a script of outcomes ('ok' or a failure code); after the script, FALLBACK. */
export class FakeTransport implements Transport {
  readonly name = 'fake';
  readonly specs: TunnelSpec[] = [];
  readonly tunnels: FakeTunnel[] = [];
  constructor(
    /** 'hang': an open() that never settles, whatever happens (a wedged transport). */
    public script: Array<'ok' | 'hang' | TransportErrorCode> = [],
    public fallback: 'ok' | 'hang' | TransportErrorCode = 'ok',
  ) {}

  async open(spec: TunnelSpec, signal?: AbortSignal): Promise<Tunnel> {
    this.specs.push(spec);
    if (signal?.aborted) throw new TransportError('CLOSED', 'aborted');
    const outcome = this.script.shift() ?? this.fallback;
    if (outcome === 'hang') return new Promise<Tunnel>(() => undefined);
    if (outcome !== 'ok') throw new TransportError(outcome, `fake ${outcome}`);
    const tunnel = new FakeTunnel(spec);
    this.tunnels.push(tunnel);
    return tunnel;
  }

  get live(): FakeTunnel[] {
    return this.tunnels.filter((t) => t.open);
  }
}

export interface LogLine {
  readonly level: string;
  readonly obj: Record<string, unknown>;
  readonly msg: string;
}

export function memoryLogger(): AgentLogger & { lines: LogLine[]; events(name: string): Record<string, unknown>[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg: string) => {
    lines.push({ level, obj: obj as Record<string, unknown>, msg });
  };
  return {
    lines,
    debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'),
    events: (name) => lines.filter((l) => l.obj.event === name).map((l) => l.obj),
  };
}

export interface TestDevice {
  readonly dir: string;
  readonly ca: KeyPair;
  readonly hostKey: KeyPair;
  readonly hostCa: KeyPair;
  readonly key: KeyPair;
  readonly deviceId: string;
  readonly ports: { first: number; last: number };
  /** The sshEndpoints of the next grant (the first is also its ssh endpoint); undefined: none, as from a broker before 0.4. */
  endpoints: SshAddressWire[] | undefined;
  grant(options: { now: number; validitySeconds?: number; serial?: bigint }): CertificateGrantWire;
  close(): Promise<void>;
}

/** A state directory enrolled with a throwaway CA, as `agent enroll` leaves it. */
export async function enrolledDevice(options: { now: number; validitySeconds?: number; ports?: { first: number; last: number }; endpoints?: SshAddressWire[] }): Promise<TestDevice> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-agent-'));
  const paths = await ensureStateDir(dir);
  const ca = generateKeyPair();
  const hostKey = generateKeyPair();
  const hostCa = generateKeyPair();
  const key = generateKeyPair();
  const deviceId = 'dev_test0000000000001';
  const ports = options.ports ?? { first: 20000, last: 20001 };
  let serial = 100n;
  const device: TestDevice = {
    dir, ca, hostKey, hostCa, key, deviceId, ports, endpoints: options.endpoints,
    grant: (o) => {
      const validitySeconds = o.validitySeconds ?? options.validitySeconds ?? 3600;
      const cert = signDeviceCert({ ca, publicKey: key.publicKey, deviceId, ports, serial: o.serial ?? ++serial, now: new Date(o.now), validitySeconds });
      return {
        deviceId, name: 'kiosk-1', ports, certificate: formatCertificate(cert), serial: cert.serial.toString(),
        validAfter: new Date(Number(cert.validAfter) * 1000).toISOString(),
        validBefore: new Date(Number(cert.validBefore) * 1000).toISOString(),
        renewAfter: new Date(o.now + validitySeconds * 1000 * (2 / 3)).toISOString(),
        ...(device.endpoints ? { sshEndpoints: device.endpoints } : {}),
        ssh: {
          host: device.endpoints?.[0]?.host ?? '127.0.0.1', port: device.endpoints?.[0]?.port ?? 2222, username: 'tunnel',
          hostKey: formatPublicKey(hostKey.publicKey), hostCertificateAuthority: formatPublicKey(hostCa.publicKey),
        },
      };
    },
    close: () => rm(dir, { recursive: true, force: true }),
  };
  await writeFileAtomic(paths.key, encodePrivateKey(key), { mode: 0o600 });
  await writeGrant(paths, device.grant({ now: options.now }), { url: 'https://127.0.0.1:9', pin: `sha256//${'A'.repeat(43)}=` }, { enrolledAt: new Date(options.now).toISOString(), renewedAt: null });
  return device;
}

export type FakeRenewMode = 'ok' | 'down' | 'DEVICE_REVOKED' | 'RENEWAL_GRACE_EXCEEDED' | 'STORE_BUSY';

/** The broker's renewal endpoint, scripted: answers with DEVICE's grant, or an error. */
export function fakeRenewApi(device: TestDevice, clock: Clock) {
  const calls: Array<{ at: number; request: RenewRequest }> = [];
  const api = {
    mode: 'ok' as FakeRenewMode,
    calls,
    call: async <T>(_options: ApiClientOptions, method: string, path: string, body?: unknown): Promise<T> => {
      if (method !== 'POST' || path !== '/v1/renew') throw new Error(`unexpected ${method} ${path}`);
      calls.push({ at: clock.now(), request: body as RenewRequest });
      if (api.mode === 'down') throw new ApiError('UNREACHABLE', 'cannot reach the broker');
      if (api.mode !== 'ok') throw new ApiError(api.mode, api.mode, 403);
      return device.grant({ now: clock.now() }) as T;
    },
  };
  return api;
}

// ---------------------------------------------------------------------------
// The real CLI as a child process.

export interface AgentProcess {
  readonly child: ChildProcessWithoutNullStreams;
  /** Parsed JSON log lines so far. */
  readonly logs: Array<Record<string, unknown>>;
  /** Everything written so far (stdout + stderr), raw. */
  output(): string;
  readonly exited: Promise<number>;
  waitForLog(pred: (line: Record<string, unknown>) => boolean, label: string, timeoutMs?: number, from?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number>;
}

/** `certunnel agent ARGS`; NODE_ARGS (node's options and the entry point) may name another build of the CLI, e.g. a released one. */
export function spawnAgent(args: readonly string[], env: NodeJS.ProcessEnv = {}, nodeArgs: readonly string[] = cliArgs([])): AgentProcess {
  return watchAgent(spawn(process.execPath, [...nodeArgs, 'agent', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env } }));
}

/** The shell agent (agent/certunnel-agent.sh) run with ARGS by `sh`, as a device without Node runs it. */
export function spawnShellAgent(args: readonly string[], env: NodeJS.ProcessEnv = {}): AgentProcess {
  const child = spawn('sh', [join(REPO_ROOT, 'agent', 'certunnel-agent.sh'), ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env } });
  child.stdin.end();
  return watchAgent(child);
}

/** CHILD, an agent process (either agent: both log JSON lines to stdout), with its log lines parsed as they come. */
function watchAgent(child: ChildProcessWithoutNullStreams): AgentProcess {
  const logs: Array<Record<string, unknown>> = [];
  let raw = '';
  let pending = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    raw += chunk;
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf('\n')) !== -1) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr.on('data', (chunk: string) => {
    raw += chunk;
  });
  const exited = new Promise<number>((resolve) => child.once('close', (code, signal) => resolve(code ?? (signal ? -1 : 0))));
  return {
    child, logs, exited,
    output: () => raw,
    async waitForLog(pred, label, timeoutMs = 20_000, from = 0) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = logs.slice(from).find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}; agent output:\n${raw.slice(-4000)}`);
        if (child.exitCode !== null) throw new Error(`agent exited (${child.exitCode}) before ${label}:\n${raw.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

// ---------------------------------------------------------------------------
// Shared by the end-to-end tests.

/** One enrollment token from the broker's API. */
export async function mintToken(b: TestBroker): Promise<string> {
  const res = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
  return res.tokens[0]!.token;
}

/** An agent config with fast retries and keepalives, its services on the given echo servers. */
export function agentConfig(b: { apiUrl: string; pin: string }, stateDir: string, transport: string, ssh: Pick<DeviceService, 'port'>, http: Pick<DeviceService, 'port'>): Record<string, unknown> {
  return {
    broker: { url: b.apiUrl, pin: b.pin },
    stateDir,
    transport,
    services: { ssh: `127.0.0.1:${ssh.port}`, http: `127.0.0.1:${http.port}` },
    keepalive: { intervalSeconds: 2, countMax: 2 },
    backoff: { baseMs: 200, capMs: 2000, minMs: 50 },
    renewBackoff: { baseMs: 500, capMs: 5000, minMs: 100 },
    connectTimeoutSeconds: 5,
    log: { level: 'debug' },
  };
}


/** exchange() that gives up after 3 s (a connection the broker accepted but nobody serves would wait forever). */
export function exchangeWithin(port: number, text: string): Promise<string> {
  return within(exchange(port, text).then((b) => b.toString(), () => ''), 3000, '(no answer within 3 s)');
}

/**
 * Waits until TEXT sent to PORT comes back as EXPECTED. Agents in these tests
 * renew every few seconds and reconnect with the new certificate, so on a
 * loaded machine a single exchange can fall into that gap: the outcome is
 * asserted, with a bound, not the first try.
 */
export async function answersWithin(port: number, text: string, expected: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(async () => (await exchangeWithin(port, text)) === expected, `${JSON.stringify(expected)} through port ${port}`, timeoutMs);
}


/** PROMISE's value, or FALLBACK after MS (the timer is cleared either way: no test waits on a stray timer). */
export async function within<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
