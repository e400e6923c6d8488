/**
 * `npm run demo`: certunnel end to end on this machine, with the real
 * `certunnel` commands, each printed before its output:
 *
 *   broker admin  init a data directory, start the broker, make API keys
 *   factory       mint a batch of one, flash the bundle into a device root, verify it
 *   device        a tiny web service, and the agent: it enrolls and opens the tunnel
 *   operator      list devices, send a request through the broker to the device, revoke it
 *                 — the tunnel is cut and the agent stops with its "revoked" status
 *   console       where the operators' web console is, and an admin key to sign in with
 *                 (in a file, never on screen); with --keep the broker keeps running until Ctrl-C
 *
 * Everything lives in one temporary directory, on 127.0.0.1 and ephemeral
 * ports; every child process is stopped and the directory removed at the
 * end, on failure, and on Ctrl-C. The whole run is bounded (90 s), and
 * with --keep the broker stays up afterwards, for the console, until Ctrl-C. API keys
 * are shown shortened; enrollment tokens are never shown.
 *
 * The device root is a minimal image: an /etc/passwd whose certunnel-agent
 * user is the user running the demo (so that `provision flash` can give it
 * its files without root; uid 999 when that is root) and a /usr/bin/certunnel.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { get as httpsGet } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiRequest } from '../api/index.js';
import { isListening } from '../testkit/net.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const ENTRY = join(REPO, 'cli/main.ts');
const DEADLINE_MS = 90_000;
const STEPS = 9;
/** `npm run demo -- --keep`: leave the broker running at the end (for the console) until Ctrl-C. */
const KEEP = process.argv.includes('--keep');
const DOMAIN = 'demo.certunnel.test';

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

class DemoError extends Error {}

const started = Date.now();
const work = await mkdtemp(join(tmpdir(), 'certunnel-demo-'));
const children = new Set<ChildProcess>();
const servers = new Set<Server>();
let step = 0;

/** Shortens what should not be shown whole: API keys; enrollment tokens never appear, but just in case. */
function mask(text: string): string {
  return text
    .replaceAll(work, '$DEMO')
    .replace(/\b(ctk_[a-z]+_[a-z2-7]{4})[A-Za-z0-9._~-]*/g, '$1…')
    .replace(/\bcte_[A-Za-z0-9_-]+/g, 'cte_…');
}

const print = (text = ''): void => {
  process.stdout.write(`${mask(text)}\n`);
};
const indent = (text: string): string => text.trimEnd().split('\n').map((l) => `    ${l}`).join('\n');

function title(text: string): void {
  step++;
  print(`\n[${step}/${STEPS}] ${text}`);
}

/** The environment for certunnel: the caller's, minus any CERTUNNEL_* that would point elsewhere. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CERTUNNEL_')) env[k] = v;
  return { ...env, ...extra };
}

function spawnCli(args: readonly string[], env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, ...args], { cwd: REPO, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Runs `certunnel ARGS`, prints the command line and its output; fails the demo on a non-zero exit unless allowed. */
async function certunnel(args: readonly string[], options: { env?: Record<string, string>; envShown?: string; quiet?: boolean; allowFail?: boolean } = {}): Promise<Run> {
  if (!options.quiet) print(`  $ ${options.envShown ? `${options.envShown} ` : ''}certunnel ${args.map((a) => (/[\s"]/.test(a) ? JSON.stringify(a) : a)).join(' ')}`);
  const child = spawnCli(args, options.env ?? {});
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number>((resolve) => child.once('close', (c) => resolve(c ?? -1)));
  const run = { code, stdout, stderr };
  if (!options.quiet) {
    const shown = (stdout + stderr).trim();
    if (shown) print(indent(shown));
  }
  if (code !== 0 && !options.allowFail) throw new DemoError(`certunnel ${args[0]} ${args[1] ?? ''} exited with ${code}: ${mask(stderr.trim())}`);
  return run;
}

/** Resolves with the first stdout line that PRED accepts (JSON lines), or fails after TIMEOUTMS. */
function waitForLine<T>(child: ChildProcess, pred: (line: Record<string, unknown>) => T | undefined, label: string, timeoutMs = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    let pending = '';
    let raw = '';
    const timer = setTimeout(() => done(new DemoError(`timed out waiting for ${label}\n${mask(raw.slice(-2000))}`)), timeoutMs);
    const onData = (c: Buffer): void => {
      raw += c.toString();
      pending += c.toString();
      let nl: number;
      while ((nl = pending.indexOf('\n')) !== -1) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        const hit = pred(parsed);
        if (hit !== undefined) return done(null, hit);
      }
    };
    const onErr = (c: Buffer): void => {
      raw += c.toString();
    };
    const onExit = (code: number | null): void => done(new DemoError(`${label}: the process exited (${code})\n${mask(raw.slice(-2000))}`));
    function done(err: Error | null, value?: T): void {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.stderr!.off('data', onErr);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(value as T);
    }
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onErr);
    child.once('exit', onExit);
  });
}

interface ProxyTarget {
  readonly apiUrl: string;
  readonly host: string;
  /** The broker's own TLS certificate (made at init, it covers *.<domain>). */
  readonly ca: string;
  readonly apiKey: string;
}

/** GET https://HOST:PORT/ at the broker's API address: what a browser or curl does once HOST resolves to the broker. */
function proxyGet(target: ProxyTarget): Promise<{ status: number; error: string | null; body: string }> {
  const url = new URL(target.apiUrl);
  return new Promise((resolve, reject) => {
    const req = httpsGet({
      host: url.hostname, port: Number(url.port), path: '/', servername: target.host, ca: target.ca, agent: false, timeout: 5000,
      headers: { host: `${target.host}:${url.port}`, authorization: `Bearer ${target.apiKey}` },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, error: (res.headers['x-certunnel-error'] as string | undefined) ?? null, body }));
    });
    req.once('timeout', () => req.destroy(new Error('timed out')));
    req.once('error', reject);
  });
}

async function until(cond: () => Promise<boolean>, label: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new DemoError(`timed out waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let cleaning: Promise<void> | null = null;
/** Stops every child (TERM, then KILL after 3 s), closes the web service, removes the directory. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await Promise.all([...children].map((child) => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill('SIGTERM');
    })));
    for (const server of servers) server.closeAllConnections();
    await Promise.all([...servers].map((s) => new Promise((r) => s.close(r))));
    await rm(work, { recursive: true, force: true });
  })();
  return cleaning;
}

let interrupted = false;
let keeping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    process.stderr.write(`\ndemo: ${signal}: cleaning up\n`);
    // Ctrl-C is how a --keep run ends: a success, once the demo itself completed.
    void cleanup().finally(() => process.exit(keeping ? 0 : 130));
  });
}
// A reader that goes away (`npm run demo | head`) or a bug must not leave a broker behind.
process.stdout.on('error', () => {
  void cleanup().finally(() => process.exit(1));
});
for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
  process.on(event, (err: unknown) => {
    process.stderr.write(`\ndemo: FAILED: ${mask(err instanceof Error ? err.message : String(err))}\n`);
    void cleanup().finally(() => process.exit(1));
  });
}
const watchdog = setTimeout(() => {
  process.stderr.write(`\ndemo: FAILED: still running after ${DEADLINE_MS / 1000} s; cleaning up\n`);
  void cleanup().finally(() => process.exit(1));
}, DEADLINE_MS);
watchdog.unref();

/** Steps 1 and 2: `certunnel init` on a random pool, then the broker until its ready line. */
async function startBroker(data: string): Promise<{ apiUrl: string }> {
  const poolFirst = 20_000 + randomInt(0, 99) * 100;
  title('Broker admin: create the data directory (CA keys, TLS key and pin, SQLite, admin API key)');
  await certunnel(['init', '--data', data, '--domain', DOMAIN, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', `${poolFirst}-${poolFirst + 99}`]);

  title('Broker admin: start the broker (HTTPS API and SSH gateway)');
  print(`  $ certunnel broker --data ${data} --log-level warn`);
  const broker = spawnCli(['broker', '--data', data, '--log-level', 'warn'], {});
  const ready = await waitForLine(broker, (l) => (l.ready === true ? (l as { apiUrl: string; sshPort: number }) : undefined), 'the broker');
  print(indent(`ready: API ${ready.apiUrl}, SSH gateway 127.0.0.1:${ready.sshPort} (pid ${broker.pid})`));
  return ready;
}

/** Step 3: the factory's API key and the operator's. */
async function createApiKeys(data: string): Promise<{ factoryKey: string; operatorKey: string }> {
  title('Broker admin: one API key for the factory, one for an operator');
  // Two at once (each start of the CLI takes a second or two).
  const keyArgs = [['provisioner', 'factory-1'], ['operator', 'alice']].map(([role, name]) => ['apikey', 'create', '--data', data, '--role', role!, '--name', name!]);
  const keyRuns = await Promise.all(keyArgs.map((args) => certunnel(args, { quiet: true })));
  for (const [i, run] of keyRuns.entries()) {
    print(`  $ certunnel ${keyArgs[i]!.join(' ')}`);
    print(indent(run.stdout + run.stderr));
  }
  return { factoryKey: keyRuns[0]!.stdout.trim(), operatorKey: keyRuns[1]!.stdout.trim() };
}

/** The device's own web service, which only the device can reach (127.0.0.1 on the device); its port. */
async function startWebService(): Promise<number> {
  const web = createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`hello from kiosk-0001: ${req.method} ${req.url} served on the device\n`);
  });
  servers.add(web);
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  return (web.address() as { port: number }).port;
}

/** Steps 4 and 5: a batch of one, flashed into a minimal device root and verified; the root. */
async function provisionDevice(data: string, factoryKey: string, webPort: number): Promise<string> {
  title('Factory: mint a batch of one token and write the device bundle (the device\'s web service is on port ' + webPort + ')');
  const factory = join(work, 'factory');
  await certunnel(['provision', 'batch', '--data', data, '--count', '1', '--batch', 'demo', '--name-prefix', 'kiosk', '--service', `http=127.0.0.1:${webPort}`, '--out', factory], {
    env: { CERTUNNEL_API_KEY: factoryKey }, envShown: 'CERTUNNEL_API_KEY=$FACTORY_KEY',
  });

  title('Factory: flash the bundle into the device\'s root filesystem, then verify the image');
  const root = join(work, 'device-root');
  const uid = process.getuid?.() === 0 ? 999 : (process.getuid?.() ?? 999);
  const gid = process.getgid?.() === 0 ? 999 : (process.getgid?.() ?? 999);
  await mkdir(join(root, 'etc'), { recursive: true });
  await writeFile(join(root, 'etc/passwd'), `root:x:0:0:root:/root:/bin/sh\ncertunnel-agent:x:${uid}:${gid}:certunnel agent:/var/lib/certunnel:/usr/sbin/nologin\n`);
  await writeFile(join(root, 'etc/group'), `root:x:0:\ncertunnel-agent:x:${gid}:\n`);
  // The image's certunnel, which its systemd unit would run.
  await mkdir(join(root, 'usr/bin'), { recursive: true });
  await writeFile(join(root, 'usr/bin/certunnel'), `#!/bin/sh\nexec node --import tsx ${ENTRY} "$@"\n`, { mode: 0o755 });
  await certunnel(['provision', 'flash', '--bundle', join(factory, 'bundles/demo-0001.json'), '--root', root]);
  await certunnel(['provision', 'verify', '--root', root], { env: { CERTUNNEL_API_KEY: factoryKey }, envShown: 'CERTUNNEL_API_KEY=$FACTORY_KEY' });
  return root;
}

/** Step 6: the agent from the device root, until its tunnel is up; the device's http port on the broker, and the agent's exit status to come. */
async function startAgent(root: string): Promise<{ httpPort: number; agentExit: Promise<number> }> {
  title('Device: the agent enrolls with its token and opens the reverse tunnel');
  // As the unit does: the token comes from its own 0600 file (a systemd credential).
  const agentArgs = ['agent', 'run', '--config', join(root, 'etc/certunnel/agent.json'), '--state-dir', join(root, 'var/lib/certunnel'), '--token-file', join(root, 'etc/certunnel/enroll-token')];
  print(`  $ certunnel ${agentArgs.join(' ')}`);
  const agent = spawnCli(agentArgs, {});
  const agentExit = new Promise<number>((resolve) => agent.once('close', (code) => resolve(code ?? -1)));
  const enrolled = waitForLine(agent, (l) => (l.event === 'enrolled' ? l : undefined), 'the enrollment');
  const connected = waitForLine(agent, (l) => (l.event === 'connected' ? l : undefined), 'the tunnel');
  connected.catch(() => undefined); // awaited below; if the enrollment fails first, that is the error shown
  const e = (await enrolled) as { deviceId: string; ports: { first: number; last: number }; validBefore: string };
  print(indent(`agent: enrolled ${e.deviceId}, ports ${e.ports.first}-${e.ports.last}, certificate valid until ${e.validBefore}`));
  const c = (await connected) as { transport: string; forwards: string[] };
  print(indent(`agent: tunnel up (${c.transport}): ${c.forwards.join(', ')}`));
  return { httpPort: e.ports.first + 1, agentExit };
}

/** How the operator's commands run: with the key in the environment, shown by name. */
function asOperator(operatorKey: string): { env: Record<string, string>; envShown: string } {
  return { env: { CERTUNNEL_API_KEY: operatorKey }, envShown: 'CERTUNNEL_API_KEY=$OPERATOR_KEY' };
}

/** Step 7: once the device shows online, list devices and send a request through the broker to the device. */
async function reachDevice(data: string, apiUrl: string, operatorKey: string): Promise<ProxyTarget> {
  title('Operator: the device is online; a request goes through the broker to the device');
  const pin = (await readFile(join(data, 'tls/api.pin'), 'utf8')).trim();
  await until(async () => (await apiRequest<{ online: boolean }>({ baseUrl: apiUrl, pin, apiKey: operatorKey }, 'GET', '/v1/devices/kiosk-0001')).online, 'the device to show online');
  await certunnel(['device', 'list', '--data', data], asOperator(operatorKey));
  const target: ProxyTarget = { apiUrl, host: `kiosk-0001.${DOMAIN}`, ca: await readFile(join(data, 'tls/api.crt'), 'utf8'), apiKey: operatorKey };
  const port = new URL(apiUrl).port;
  print(`  GET https://${target.host}:${port}/ with the operator's key, through the broker's HTTP proxy; as curl:`);
  print(`    curl --cacert $DEMO/broker/tls/api.crt --resolve ${target.host}:${port}:127.0.0.1 -H "Authorization: Bearer $OPERATOR_KEY" https://${target.host}:${port}/`);
  const reply = await proxyGet(target);
  print(indent(`HTTP ${reply.status}: ${reply.body.trim()}`));
  if (reply.status !== 200 || !reply.body.includes('kiosk-0001')) throw new DemoError('the request did not reach the device');
  return target;
}

/** Step 8: revoke; the tunnel port closes, the proxy refuses, and the agent exits with its "revoked" status (10). */
async function revokeDevice(data: string, target: ProxyTarget, httpPort: number, agentExit: Promise<number>): Promise<void> {
  title('Operator: revoke the device; the broker cuts its tunnel');
  await certunnel(['device', 'revoke', 'kiosk-0001', '--reason', 'demo: revoked', '--data', data], asOperator(target.apiKey));
  await until(async () => !(await isListening(httpPort)), 'the tunnel to close', 5000);
  const after = await proxyGet(target);
  print(`  GET https://${target.host}:${new URL(target.apiUrl).port}/ again`);
  print(indent(`HTTP ${after.status} ${after.error ?? ''}`.trimEnd()));
  print(indent(`the tunnel is gone: nothing listens on ${httpPort}, kiosk-0001's http port on the broker's loopback`));
  if (after.status === 200) throw new DemoError('the revoked device still answered');
  const status = await Promise.race([agentExit, new Promise<number>((r) => setTimeout(() => r(-2), 15_000).unref())]);
  if (status === -2) throw new DemoError('the agent did not stop after the revocation');
  print(indent(`agent: exited with status ${status}${status === 10 ? ' (revoked: it will not reconnect or renew)' : ''}`));
  if (status !== 10) throw new DemoError(`the agent exited with ${status}, not 10 (revoked)`);
}

/** Step 9: the console on the broker's own origin, and an admin key for it in a file (0600) under $DEMO. */
async function showConsole(data: string, apiUrl: string): Promise<void> {
  title('Operators: the same broker in a browser, the console');
  const run = await certunnel(['apikey', 'create', '--data', data, '--role', 'admin', '--name', 'console-admin'], { quiet: true });
  const keyFile = join(work, 'console-admin.key');
  await writeFile(keyFile, `${run.stdout.trim()}\n`, { mode: 0o600 });
  print(`  console: ${apiUrl}/console/`);
  print(`  (the broker's TLS certificate is its own, made by init: the browser asks you to accept it once)`);
  process.stdout.write(`  sign in with the admin API key in ${keyFile}\n`);
}

async function demo(): Promise<void> {
  print(`certunnel demo: a broker, a factory, a device and an operator on this machine.`);
  process.stdout.write(`Everything lives in ${work} (shown as $DEMO) and is removed at the end.\n`);
  const data = join(work, 'broker');
  const broker = await startBroker(data);
  const { factoryKey, operatorKey } = await createApiKeys(data);
  const root = await provisionDevice(data, factoryKey, await startWebService());
  const { httpPort, agentExit } = await startAgent(root);
  const target = await reachDevice(data, broker.apiUrl, operatorKey);
  await revokeDevice(data, target, httpPort, agentExit);
  await showConsole(data, broker.apiUrl);
}

/** --keep: the broker (and the demo's directory) stay until Ctrl-C, whose handler cleans up. */
async function keepRunning(): Promise<void> {
  clearTimeout(watchdog);
  keeping = true;
  print('\n--keep: the broker keeps running for the console; press Ctrl-C to stop it and remove $DEMO');
  await new Promise<never>(() => undefined);
}

let failed = false;
try {
  await demo();
  if (KEEP) await keepRunning();
} catch (err) {
  failed = true;
  if (!interrupted) process.stderr.write(`\ndemo: FAILED: ${mask(err instanceof Error ? err.message : String(err))}\n`);
} finally {
  await cleanup();
  clearTimeout(watchdog);
}
print(failed ? `\ndemo failed after ${((Date.now() - started) / 1000).toFixed(1)} s; cleaned up` : `\ndemo complete in ${((Date.now() - started) / 1000).toFixed(1)} s; stopped every process and removed $DEMO`);
process.exitCode = failed ? 1 : 0;
