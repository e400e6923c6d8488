/**
 * The openssh transport: runs the system `ssh` client and supervises it.
 *
 *   ssh -N -v -F /dev/null -o ExitOnForwardFailure=yes -o ServerAliveInterval=… \
 *       -o UserKnownHostsFile=<state>/known_hosts -o StrictHostKeyChecking=yes \
 *       -i <state>/device_key -o CertificateFile=<state>/device_key-cert.pub \
 *       -R 127.0.0.1:P:host:port … -p PORT -l tunnel HOST
 *
 * -F /dev/null: nothing from the machine's ssh_config applies. known_hosts
 * holds the pinned host key and the host CA (@cert-authority), and nothing
 * is ever added to it (StrictHostKeyChecking=yes, UpdateHostKeys=no): never
 * trust on first use. The tunnel counts as up when ssh has confirmed every
 * forward ("remote forward success", a debug1 line, hence -v); the child's
 * stderr is parsed, never logged whole.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { TUNNEL_HOST } from '../api/index.js';
import { TransportError, type Transport, type TransportErrorCode, type Tunnel, type TunnelEnd, type TunnelSpec } from './transport.js';

function bracket(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

export function opensshArgs(spec: TunnelSpec): string[] {
  const seconds = (ms: number): string => String(Math.max(1, Math.round(ms / 1000)));
  const options: Record<string, string> = {
    BatchMode: 'yes',
    ExitOnForwardFailure: 'yes',
    ServerAliveInterval: seconds(spec.keepaliveIntervalMs),
    ServerAliveCountMax: String(spec.keepaliveCountMax),
    ConnectTimeout: seconds(spec.connectTimeoutMs),
    UserKnownHostsFile: spec.knownHostsPath,
    GlobalKnownHostsFile: '/dev/null',
    StrictHostKeyChecking: 'yes',
    UpdateHostKeys: 'no',
    CheckHostIP: 'no',
    IdentitiesOnly: 'yes',
    IdentityAgent: 'none',
    CertificateFile: spec.certificatePath,
    PubkeyAuthentication: 'yes',
    PasswordAuthentication: 'no',
    KbdInteractiveAuthentication: 'no',
    HostbasedAuthentication: 'no',
    ControlMaster: 'no',
    ControlPath: 'none',
    ForwardAgent: 'no',
    ForwardX11: 'no',
    PermitLocalCommand: 'no',
    RequestTTY: 'no',
  };
  const args = ['-N', '-v', '-F', '/dev/null'];
  for (const [name, value] of Object.entries(options)) args.push('-o', `${name}=${value}`);
  if (spec.bindAddress) args.push('-b', spec.bindAddress);
  for (const f of spec.forwards) args.push('-R', `${TUNNEL_HOST}:${f.remotePort}:${bracket(f.localHost)}:${f.localPort}`);
  args.push('-i', spec.keyPath, '-p', String(spec.port), '-l', spec.username, '--', spec.host);
  return args;
}

const PATTERNS: ReadonlyArray<[RegExp, TransportErrorCode]> = [
  [/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No \S+ host key is known|host key for .* has changed/i, 'HOST_KEY_MISMATCH'],
  [/Permission denied|Too many authentication failures|no more authentication methods/i, 'AUTH_REFUSED'],
  [/remote port forwarding failed|Could not request remote forwarding/i, 'FORWARD_REFUSED'],
  [/Timeout, server .* not responding/i, 'KEEPALIVE_TIMEOUT'],
  [/Connection timed out during banner exchange|Connection timed out|Operation timed out/i, 'TIMEOUT'],
  [/Connection refused|No route to host|Network is unreachable|Could not resolve hostname|Name or service not known|kex_exchange_identification|Connection closed by .* port \d+$/i, 'UNREACHABLE'],
  [/closed by remote host|Connection reset|Broken pipe|Disconnected from|Connection to .* closed/i, 'DISCONNECTED'],
];

/**
 * The first recognised failure among ssh's stderr lines. Debug lines are
 * ignored: every failure that matters has a plain line of its own, and the
 * debug chatter about forwarded connections ("connect to … Connection
 * refused" for a local service that is down) would be misread.
 */
export function classifySshStderr(lines: readonly string[]): { code: TransportErrorCode; line: string } | undefined {
  const plain = lines.filter((l) => !/^debug\d?:/.test(l));
  for (const [pattern, code] of PATTERNS) {
    const line = plain.find((l) => pattern.test(l));
    if (line) return { code, line: line.slice(0, 200) };
  }
  return undefined;
}

/** Ends an ssh this state directory started before a crash (it would hold the ports on an sshd broker). */
async function endStaleChild(pidFile: string, certificatePath: string): Promise<void> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (cmdline.includes(certificatePath)) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone meanwhile
    }
  }
  await unlink(pidFile).catch(() => undefined);
}

/** Removes PIDFILE if it still names PID (the next child may have written its own meanwhile). */
async function forgetPid(pidFile: string, pid: number | undefined): Promise<void> {
  const current = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (pid !== undefined && current === pid) await unlink(pidFile).catch(() => undefined);
}

/**
 * Reads ssh's stderr line by line: counts the confirmed forwards (calling
 * onAllConfirmed when every one is) and keeps the last plain lines, which
 * it returns, for the diagnosis.
 */
function watchStderr(child: ChildProcess, forwards: number, onAllConfirmed: () => void): string[] {
  const recent: string[] = [];
  let confirmed = 0;
  let buffer = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) !== -1) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (/remote forward success for: listen/.test(line)) {
        confirmed += 1;
        if (confirmed === forwards) onAllConfirmed();
        continue;
      }
      if (/^debug\d?:/.test(line)) continue;
      recent.push(line);
      if (recent.length > 20) recent.shift();
    }
  });
  return recent;
}

/** What the agent did to the child: closing it on purpose, or the child never started. */
interface ChildState {
  closing: boolean;
  spawnError?: Error;
}

/**
 * How the child ended: 'close' normally (exit + stderr drained), but never
 * depend on it alone: after 'exit' the last stderr lines get a moment, and
 * a spawn failure may report nothing but 'error'.
 */
function childEnd(child: ChildProcess, state: ChildState, recent: readonly string[], command: string, pidFile: string | undefined): Promise<TunnelEnd> {
  return new Promise<TunnelEnd>((resolve) => {
    let done = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (done) return;
      done = true;
      if (pidFile) void forgetPid(pidFile, child.pid);
      if (state.closing) return resolve({ code: 'CLOSED', message: 'closed by the agent' });
      if (state.spawnError) return resolve({ code: 'SPAWN_FAILED', message: `cannot run ${command}: ${state.spawnError.message}` });
      const found = classifySshStderr(recent);
      resolve(found ? { code: found.code, message: found.line } : { code: 'DISCONNECTED', message: `ssh exited (${signal ?? code})` });
    };
    child.once('close', finish);
    child.once('exit', (code, signal) => setTimeout(() => finish(code, signal), 500).unref());
    child.once('error', (err) => {
      state.spawnError = err;
      setTimeout(() => finish(null, null), 100).unref();
    });
  });
}

/** SIGTERM, SIGKILL after 3 s; returns once the child is gone, or after 6 s regardless. */
async function killChild(child: ChildProcess, closed: Promise<TunnelEnd>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  const hard = setTimeout(() => child.kill('SIGKILL'), 3000);
  const giveUp = new Promise<void>((resolve) => setTimeout(resolve, 6000).unref());
  await Promise.race([closed, giveUp]);
  clearTimeout(hard);
}

/** Whichever comes first: every forward up, ssh gone, no confirmation within TIMEOUT_MS, or SIGNAL aborted. */
async function firstOutcome(ready: Promise<void>, closed: Promise<TunnelEnd>, timeoutMs: number, signal?: AbortSignal): Promise<'ready' | 'timeout' | 'aborted' | TunnelEnd> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const aborted = new Promise<'aborted'>((resolve) => {
    if (signal?.aborted) resolve('aborted');
    signal?.addEventListener('abort', () => resolve('aborted'), { once: true });
  });
  const outcome = await Promise.race([ready.then(() => 'ready' as const), closed, timeout, aborted]);
  clearTimeout(timer);
  return outcome;
}

async function openTunnel(spec: TunnelSpec, command: string, signal?: AbortSignal): Promise<Tunnel> {
  if (spec.pidFile) await endStaleChild(spec.pidFile, spec.certificatePath);
  let child: ChildProcess;
  try {
    child = spawn(command, opensshArgs(spec), { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new TransportError('SPAWN_FAILED', `cannot run ${command}: ${(err as Error).message}`);
  }
  // Every listener goes on before the first await: a child that fails at once must not be missed.
  const state: ChildState = { closing: false };
  let allConfirmed!: () => void;
  // Up when every forward is confirmed.
  const ready = new Promise<void>((resolve) => {
    allConfirmed = resolve;
    if (spec.forwards.length === 0) resolve();
  });
  const recent = watchStderr(child, spec.forwards.length, allConfirmed);
  const closed = childEnd(child, state, recent, command, spec.pidFile);
  if (spec.pidFile && child.pid) await writeFile(spec.pidFile, `${child.pid}\n`, { mode: 0o644 }).catch(() => undefined);

  const tunnel: Tunnel = {
    closed,
    async close() {
      state.closing = true;
      await killChild(child, closed);
    },
  };
  const outcome = await firstOutcome(ready, closed, spec.connectTimeoutMs * 2, signal);
  if (outcome === 'ready') return tunnel;
  if (outcome === 'aborted' || outcome === 'timeout') {
    state.closing = true;
    await killChild(child, closed);
    throw outcome === 'aborted'
      ? new TransportError('CLOSED', 'aborted by the agent')
      : new TransportError('TIMEOUT', `ssh did not confirm the forwards within ${spec.connectTimeoutMs * 2} ms`);
  }
  // ssh exited before the tunnel was up.
  const code = outcome.code === 'DISCONNECTED' ? 'UNREACHABLE' : outcome.code;
  throw new TransportError(code, outcome.message);
}

export function createOpensshTransport(options: { command?: string } = {}): Transport {
  const command = options.command ?? 'ssh';
  return { name: 'openssh', open: (spec, signal) => openTunnel(spec, command, signal) };
}
