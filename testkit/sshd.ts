/**
 * A throwaway OpenSSH sshd on 127.0.0.1 as a test referee: the caller
 * gives the configuration lines that matter to the test; this helper adds
 * what any test sshd needs (its own port, host key, no PAM, no pid file),
 * runs `sshd -D -e -f <config>` as a child and stops it.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sshKeygenOk } from './openssh.js';
import { freePort } from './net.js';

export interface SshdOptions {
  /**
   * sshd_config lines (TrustedUserCAKeys, AuthorizedPrincipalsFile, …).
   * They take precedence over the helper's defaults, since sshd keeps the
   * first value it reads; "Match" blocks stay at the end.
   */
  readonly config: readonly string[];
  /** Host private key path; default: a fresh Ed25519 key in the sshd's directory. */
  readonly hostKeyPath?: string;
  /** How long to wait for "Server listening"; default 10 s. */
  readonly startTimeoutMs?: number;
}

export interface RunningSshd {
  readonly port: number;
  /** The sshd's scratch directory (config, generated host key). */
  readonly dir: string;
  readonly hostKeyPath: string;
  /** sshd's log so far (-e: to stderr), for assertions and failure messages. */
  output(): string;
  /** Stops sshd and the per-connection processes it forked; removes its directory. */
  stop(): Promise<void>;
}

const SSHD = '/usr/sbin/sshd'; // sshd re-executes itself and insists on an absolute path

function withDefaults(config: readonly string[], port: number, hostKeyPath: string): string {
  const firstMatch = config.findIndex((line) => /^\s*Match\s/i.test(line));
  const head = firstMatch === -1 ? config : config.slice(0, firstMatch);
  const tail = firstMatch === -1 ? [] : config.slice(firstMatch);
  const defaults = [
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${hostKeyPath}`,
    'PidFile none',
    'UsePAM no',
    // Test files live under /tmp, which StrictModes rejects (world-writable).
    'StrictModes no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'LogLevel VERBOSE',
  ];
  return `${[...head, ...defaults, ...tail].join('\n')}\n`;
}

function startOnce(configPath: string, port: number, timeoutMs: number): Promise<{ child: ChildProcessWithoutNullStreams; log: Buffer[] }> {
  // Own process group: stop() signals the group, so forked session processes go too.
  const child = spawn(SSHD, ['-D', '-e', '-f', configPath], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  const log: Buffer[] = [];
  return new Promise((resolve, reject) => {
    const text = (): string => Buffer.concat(log).toString('utf8');
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`sshd did not start within ${timeoutMs} ms:\n${text()}`));
    }, timeoutMs);
    const onData = (chunk: Buffer): void => {
      log.push(chunk);
      if (text().includes(`Server listening on 127.0.0.1 port ${port}`)) {
        clearTimeout(timer);
        resolve({ child, log });
      }
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', onData);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`sshd exited with ${code}:\n${text()}`));
    });
  });
}

export async function startSshd(options: SshdOptions): Promise<RunningSshd> {
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 }); // privilege separation directory
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-sshd-'));
  try {
    let hostKeyPath = options.hostKeyPath;
    if (!hostKeyPath) {
      hostKeyPath = join(dir, 'ssh_host_ed25519_key');
      await sshKeygenOk(['-q', '-t', 'ed25519', '-N', '', '-f', hostKeyPath]);
    }
    const configPath = join(dir, 'sshd_config');
    // Another process may take the port between freePort() and sshd's bind: try again.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      await writeFile(configPath, withDefaults(options.config, port, hostKeyPath));
      try {
        const { child, log } = await startOnce(configPath, port, options.startTimeoutMs ?? 10_000);
        const exited = new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) resolve();
          else child.once('exit', () => resolve());
        });
        const keyPath = hostKeyPath;
        return {
          port,
          dir,
          hostKeyPath: keyPath,
          output: () => Buffer.concat(log).toString('utf8'),
          async stop() {
            try {
              if (child.pid !== undefined) process.kill(-child.pid, 'SIGTERM');
            } catch {
              // already gone
            }
            await exited;
            await rm(dir, { recursive: true, force: true });
          },
        };
      } catch (err) {
        if (attempt < 3 && /Address already in use/.test(String(err))) continue;
        throw err;
      }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
