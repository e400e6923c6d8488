/**
 * Fixtures for the provisioning tests: bundles made without a broker, image
 * roots in temporary directories (with or without an /etc/passwd, merged
 * /usr), a batch run against a real test broker, and the real `certunnel
 * agent run` started from an image root.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ApiClientOptions, apiRequest } from '../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { BUNDLE_FORMAT, type BatchDeps, type BrokerCall, type DeviceBundle } from '../../provisioning/index.js';
import { cliArgs, REPO_ROOT } from '../../testkit/cli.js';

/**
 * A unit shaped like a real one, for tests of the unit handling itself
 * (the end-to-end tests use the shipped scripts/systemd/ unit).
 */
export const FIXTURE_UNIT = `[Unit]
Description=certunnel device agent (test fixture)

[Service]
User=certunnel
Group=certunnel
ExecStart=/usr/bin/certunnel agent run --config /etc/certunnel/agent.json --token-file \${CREDENTIALS_DIRECTORY}/enroll-token
LoadCredential=enroll-token:/etc/certunnel/enroll-token
SetCredential=enroll-token:\\n
Restart=always

[Install]
WantedBy=multi-user.target
`;

export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export interface ImageOptions {
  /** The system user (uid 999, gid 998) in etc/passwd and etc/group; false for none. Default certunnel. */
  readonly user?: string | false;
  /** lib -> usr/lib, as on merged-/usr distributions. */
  readonly mergedUsr?: boolean;
}

/** A minimal image root under PARENT. */
export async function makeImage(parent: string, name: string, options: ImageOptions = {}): Promise<string> {
  const root = join(parent, name);
  await mkdir(join(root, 'etc'), { recursive: true });
  await mkdir(join(root, 'usr/lib'), { recursive: true });
  if (options.mergedUsr) await symlink('usr/lib', join(root, 'lib'));
  if (options.user !== false) {
    const user = options.user ?? 'certunnel';
    await writeFile(join(root, 'etc/passwd'), `root:x:0:0:root:/root:/bin/sh\n${user}:x:999:998:certunnel agent:/var/lib/certunnel:/usr/sbin/nologin\n`);
    await writeFile(join(root, 'etc/group'), `root:x:0:\n${user}:x:998:\n`);
  }
  return root;
}

export function fakeBundle(overrides: Partial<DeviceBundle> = {}): DeviceBundle {
  const key = (): string => formatPublicKey(generateKeyPair().publicKey);
  const pin = `sha256//${randomBytes(32).toString('base64')}`;
  return {
    format: BUNDLE_FORMAT, batch: 'line-1', index: 1, tokenId: 'tok_abcdefghijklmnop',
    expiresAt: new Date(Date.now() + 86_400_000).toISOString(), bindName: null, bindSerial: null,
    broker: { url: 'https://broker.example.net:8443', pin, ssh: { host: 'broker.example.net', port: 2222, username: 'tunnel' }, hostKey: key(), hostCertificateAuthority: key(), userCertificateAuthority: key() },
    agent: { broker: { url: 'https://broker.example.net:8443', pin }, stateDir: '/var/lib/certunnel', enroll: { token: `cte_${randomBytes(24).toString('base64url')}` } },
    ...overrides,
  };
}

/** Batch deps against a test broker, recording every request (method and path). */
export function recordingDeps(options: ApiClientOptions, extra: Partial<BatchDeps> = {}): BatchDeps & { calls: string[] } {
  const calls: string[] = [];
  const api: BrokerCall = (method, path, body) => {
    calls.push(`${method} ${path.split('?')[0]}`);
    return apiRequest(options, method, path, body);
  };
  return { api, apiUrl: options.baseUrl, connectionPin: options.pin ?? null, calls, ...extra };
}

/** Every token secret in the bundles of OUTDIR. */
export async function bundleSecrets(outDir: string): Promise<string[]> {
  const dir = join(outDir, 'bundles');
  const out: string[] = [];
  for (const file of await readdir(dir)) {
    if (!file.endsWith('.json')) continue;
    const bundle = JSON.parse(await readFile(join(dir, file), 'utf8')) as DeviceBundle;
    out.push((bundle.agent.enroll as { token: string }).token);
  }
  return out;
}

export interface AgentProcess {
  readonly child: ChildProcessWithoutNullStreams;
  readonly logs: Array<Record<string, unknown>>;
  output(): string;
  readonly exited: Promise<number>;
  waitForEvent(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<number>;
}

/** `certunnel agent run` from a flashed image root, as the unit runs it: its config, its state directory and its token file (inside ROOT). */
export function runAgentFromRoot(root: string, stateDir = '/var/lib/certunnel', tokenFile = '/etc/certunnel/enroll-token'): AgentProcess {
  const args = ['agent', 'run', '--config', join(root, 'etc/certunnel/agent.json'), '--state-dir', join(root, stateDir), '--token-file', join(root, tokenFile)];
  const child = spawn(process.execPath, cliArgs(args), { cwd: REPO_ROOT, env: { ...process.env } });
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
  const exited = new Promise<number>((resolve) => child.once('close', (code) => resolve(code ?? -1)));
  return {
    child, logs, exited,
    output: () => raw,
    async waitForEvent(event, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = logs.find((l) => l.event === event);
        if (hit) return hit;
        if (child.exitCode !== null) throw new Error(`agent exited (${child.exitCode}) before ${event}:\n${raw.slice(-3000)}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${event}:\n${raw.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
