/**
 * The device and operator side of the conformance suite: the real OpenSSH
 * client (`ssh -v`, `sftp`), whatever gateway is under test. Verdicts are read
 * from what the client itself reports, so they mean the same thing against
 * sshd and against the embedded gateway:
 * - "Authenticated to …" (printed at -v) separates refusals at
 *   authentication from refusals of a request after it;
 * - "remote forward success for: listen H:P" is the server's yes to -R;
 * - data echoed back through a channel is the yes to -W / -L.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import { loadKeyPair } from '../../ca/index.js';
import { certificateAuthHandler } from '../../agent/ssh2-cert-auth.js';
import { sshArgs } from '../ssh-client.js';

export interface SshTarget {
  readonly host: string;
  readonly port: number;
  /** known_hosts with a @cert-authority line for the host CA. */
  readonly knownHostsPath: string;
}

export interface SshIdentity {
  readonly keyPath: string;
  /** Absent: offer the plain key. */
  readonly certPath?: string;
}

/** What a client saw the server do with its login or request. */
export type Verdict = 'ok' | 'refused';

/** Where the run stopped: at authentication, or at a request after it. */
export type Stage = 'auth' | 'request';

export interface ClientObservation {
  readonly verdict: Verdict;
  readonly stage: Stage;
  readonly detail: string;
}

const CLIENT_TIMEOUT_MS = 15_000;

/**
 * `ssh` arguments up to the destination: the shared test options
 * (testkit/ssh-client.ts: nothing from ~/.ssh, strict host key, only
 * this identity, no prompts, port and user), plus ExitOnForwardFailure so a
 * refused -R or -L ends the client. Append target.host.
 */
export function sshOptions(target: SshTarget, identity: SshIdentity, user: string): string[] {
  return [...sshArgs({ port: target.port, knownHosts: target.knownHostsPath, identity, user }), '-o', 'ExitOnForwardFailure=yes'];
}

export function authenticated(stderr: string): boolean {
  return /^Authenticated to /m.test(stderr);
}

/** The last line ssh printed that is not debug chatter: the reason it gave up. */
export function lastError(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.trim() !== '' && !/^debug\d:/.test(l) && !/^(OpenSSH_|Authenticated to|Transferred:|Bytes per second)/.test(l));
  return lines.at(-1)?.trim() ?? '';
}

export interface RunResult {
  readonly code: number;
  readonly stdout: Buffer;
  readonly stderr: string;
}

/** Runs a client to completion (killed after CLIENT_TIMEOUT_MS: a hang is a bug, not a verdict). */
export function runClient(file: string, args: readonly string[], input: Buffer | string = ''): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), CLIENT_TIMEOUT_MS);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

export interface Forward {
  readonly bind: string;
  readonly port: number;
}

/** A running `ssh -N -R …`; close() ends it (idempotent). */
export interface Tunnel {
  readonly observation: ClientObservation;
  readonly child: ChildProcess;
  stderr(): string;
  exited(): boolean;
  close(): Promise<void>;
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('close', () => resolve());
    child.kill('SIGTERM');
  });
}

/**
 * Starts `ssh -N -R bind:port:127.0.0.1:targetPort …` and settles when the
 * server has answered every forward (ok) or ssh has exited (refused:
 * ExitOnForwardFailure makes a refused -R fatal).
 */
export function openReverseTunnel(
  target: SshTarget,
  identity: SshIdentity,
  user: string,
  forwards: readonly Forward[],
  targetPort: number,
): Promise<Tunnel> {
  const args = ['-v', '-N', ...sshOptions(target, identity, user)];
  for (const f of forwards) args.push('-R', `${f.bind}:${f.port}:127.0.0.1:${targetPort}`);
  args.push(target.host);
  const child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  return new Promise((resolve, reject) => {
    let settled = false;
    const tunnel = (observation: ClientObservation): Tunnel => ({
      observation,
      child,
      stderr: () => stderr,
      exited: () => child.exitCode !== null || child.signalCode !== null,
      close: () => stopChild(child),
    });
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      child.kill('SIGKILL');
      reject(new Error(`ssh -R neither succeeded nor exited: ${lastError(stderr)}`));
    }, CLIENT_TIMEOUT_MS);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
      const successes = stderr.match(/^debug1: remote forward success for: /gm)?.length ?? 0;
      if (!settled && successes >= forwards.length) {
        settled = true;
        clearTimeout(timer);
        resolve(tunnel({ verdict: 'ok', stage: 'request', detail: `bound ${forwards.map((f) => `${f.bind}:${f.port}`).join(', ')}` }));
      }
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const stage: Stage = authenticated(stderr) ? 'request' : 'auth';
      resolve(tunnel({ verdict: 'refused', stage, detail: `exit ${code}: ${lastError(stderr)}` }));
    });
  });
}

/** `ssh -W host:port` carrying PAYLOAD; ok if the echo comes back intact. */
export async function stdioForward(
  target: SshTarget,
  identity: SshIdentity,
  user: string,
  to: Forward,
  payload: Buffer,
): Promise<ClientObservation> {
  const args = ['-v', ...sshOptions(target, identity, user), '-W', `${to.bind}:${to.port}`, target.host];
  const result = await runClient('ssh', args, payload);
  const stage: Stage = authenticated(result.stderr) ? 'request' : 'auth';
  if (result.code === 0 && result.stdout.equals(payload)) return { verdict: 'ok', stage, detail: `${payload.length} bytes echoed` };
  return { verdict: 'refused', stage, detail: `exit ${result.code}, ${result.stdout.length} bytes back: ${lastError(result.stderr)}` };
}

/** `ssh -N -L 127.0.0.1:localPort:to` and one connection through it carrying PAYLOAD. */
export async function localForward(
  target: SshTarget,
  identity: SshIdentity,
  user: string,
  to: Forward,
  payload: Buffer,
): Promise<ClientObservation> {
  const localPort = await freePort();
  const args = ['-v', '-N', ...sshOptions(target, identity, user), '-L', `127.0.0.1:${localPort}:${to.bind}:${to.port}`, target.host];
  const child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr += chunk));
  try {
    // ssh listens locally only after authentication; poll for its listener.
    const deadline = Date.now() + CLIENT_TIMEOUT_MS;
    while (!/^debug1: Local connections to /m.test(stderr) || !authenticated(stderr)) {
      if (child.exitCode !== null) {
        return { verdict: 'refused', stage: authenticated(stderr) ? 'request' : 'auth', detail: `exit ${child.exitCode}: ${lastError(stderr)}` };
      }
      if (Date.now() > deadline) throw new Error(`ssh -L did not start: ${lastError(stderr)}`);
      await sleep(20);
    }
    const echoed = await roundTrip(localPort, payload).catch((err: Error) => err);
    if (Buffer.isBuffer(echoed) && echoed.equals(payload)) return { verdict: 'ok', stage: 'request', detail: `${payload.length} bytes echoed` };
    const got = Buffer.isBuffer(echoed) ? `${echoed.length} bytes back` : echoed.message;
    return { verdict: 'refused', stage: 'request', detail: `${got}: ${lastError(stderr)}` };
  } finally {
    await stopChild(child);
  }
}

/**
 * Runs a command (or, without one, a shell) as USER; ok if it ran and said
 * its marker. PTY: ask for a terminal too (-tt, forced although stdin is a pipe).
 */
export async function execSession(
  target: SshTarget,
  identity: SshIdentity,
  user: string,
  command: string | undefined,
  options: { pty?: boolean } = {},
): Promise<ClientObservation> {
  const marker = 'certunnel-marker-4711';
  const args = ['-v', ...(options.pty ? ['-tt'] : []), ...sshOptions(target, identity, user), target.host];
  if (command !== undefined) args.push(`${command}; echo ${marker}`);
  const result = await runClient('ssh', args, command === undefined ? `echo ${marker}\nexit\n` : '');
  const stage: Stage = authenticated(result.stderr) ? 'request' : 'auth';
  const ran = result.stdout.toString('utf8').includes(marker);
  return { verdict: ran ? 'ok' : 'refused', stage, detail: `exit ${result.code}: ${lastError(result.stderr)}` };
}

/** `sftp -b /dev/null`: exits 0 only if the sftp subsystem started. */
export async function sftpSession(target: SshTarget, identity: SshIdentity, user: string): Promise<ClientObservation> {
  // sftp takes ssh's -o options but reads -p and -l differently (preserve
  // times, bandwidth limit): drop those pairs and pass port and user its way.
  const ssh = sshOptions(target, identity, user);
  const options = ssh.filter((arg, i) => arg !== '-p' && arg !== '-l' && ssh[i - 1] !== '-p' && ssh[i - 1] !== '-l');
  const args = ['-v', ...options, '-P', String(target.port), '-b', '/dev/null', `${user}@${target.host}`];
  const result = await runClient('sftp', args);
  const stage: Stage = authenticated(result.stderr) ? 'request' : 'auth';
  return { verdict: result.code === 0 ? 'ok' : 'refused', stage, detail: `exit ${result.code}: ${lastError(result.stderr)}` };
}

/**
 * The ssh2 client with the agent's certificate shim (agent/ssh2-cert-auth.ts)
 * presenting CERTIFICATE (a line, possibly tampered) for KEYPATH's key, then
 * asking for a remote forward of PORT. Used where OpenSSH cannot be the
 * client: it verifies a certificate's CA signature when loading it and drops
 * a tampered one, so a server would never see it. The host key is not
 * checked: the verdict is about the server's decision, on loopback.
 */
export async function ssh2Tunnel(target: SshTarget, keyPath: string, certificate: string, user: string, port: number): Promise<ClientObservation> {
  const key = await loadKeyPair(keyPath);
  const client = new ssh2.Client();
  try {
    return await new Promise<ClientObservation>((resolve) => {
      const timer = setTimeout(() => resolve({ verdict: 'refused', stage: 'auth', detail: 'ssh2: no answer' }), CLIENT_TIMEOUT_MS);
      const settle = (o: ClientObservation): void => {
        clearTimeout(timer);
        resolve(o);
      };
      // ssh2 may report several errors (the refusal, then the reset): the first decides.
      let ready = false;
      client.on('error', () => undefined);
      client.once('error', (err: Error) => settle({ verdict: 'refused', stage: ready ? 'request' : 'auth', detail: `ssh2: ${err.message}` }));
      client.once('ready', () => {
        ready = true;
        client.forwardIn('127.0.0.1', port, (err) =>
          settle(err ? { verdict: 'refused', stage: 'request', detail: `ssh2: ${err.message}` } : { verdict: 'ok', stage: 'request', detail: `ssh2 bound 127.0.0.1:${port}` }),
        );
      });
      client.connect({
        host: target.host,
        port: target.port,
        username: user,
        hostVerifier: () => true,
        authHandler: certificateAuthHandler(client, { username: user, key, certificate }),
        readyTimeout: CLIENT_TIMEOUT_MS,
      });
    });
  } finally {
    client.end();
  }
}

// --- TCP plumbing -----------------------------------------------------------

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A port that was free a moment ago (the kernel picks it; small race accepted in tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export { isListening, sha256 } from '../net.js';

/** An echo server on 127.0.0.1: the device's local service. */
export async function startEchoServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Sends PAYLOAD to 127.0.0.1:PORT, half-closes, and returns everything received until the peer ends. */
export function roundTrip(port: number, payload: Buffer, timeoutMs = CLIENT_TIMEOUT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(port, '127.0.0.1');
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('round trip timed out')));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', reject);
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('connect', () => socket.end(payload));
  });
}

