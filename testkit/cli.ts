/** Running the real `certunnel` CLI (from source, through tsx) as a child process. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runCommand, type RunResult } from './openssh.js';

export const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));
const ENTRY = fileURLToPath(new URL('../cli/main.ts', import.meta.url));

export function cliArgs(args: readonly string[]): string[] {
  return ['--import', 'tsx', ENTRY, ...args];
}

export function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return runCommand(process.execPath, cliArgs(args), { cwd: REPO_ROOT, env });
}

export interface BrokerProcess {
  readonly child: ChildProcessWithoutNullStreams;
  readonly apiUrl: string;
  readonly apiPort: number;
  readonly sshPort: number;
  readonly stderr: () => string;
  /** Everything it wrote to stdout: the ready line, then its JSON logs. */
  readonly stdout: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `certunnel broker --data DIR …` and waits for its ready line. */
export function spawnBroker(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<BrokerProcess> {
  const child = spawn(process.execPath, cliArgs(['broker', ...args]), { cwd: REPO_ROOT, env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`broker did not start within 90 s: ${err}`));
    }, 90_000);
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"ready":true'));
      if (!line) return;
      clearTimeout(timer);
      const ready = JSON.parse(line) as { apiUrl: string; apiPort: number; sshPort: number };
      resolve({
        child, ...ready, stderr: () => err, stdout: () => out,
        stop: async (signal = 'SIGTERM') => {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          return exited;
        },
      });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`broker exited with ${code}: ${err}`));
    });
  });
}
