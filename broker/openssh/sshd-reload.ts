/**
 * OpenSSH mode: making the operator's sshd serve a new host key or host
 * certificate (issue #14), which sshd reads only when it starts. A reload,
 * never a restart: on SIGHUP sshd re-executes its listener with the new
 * configuration while the per-connection processes, the devices' live
 * tunnels, go on (sshd(8): "sshd rereads its configuration file when it
 * receives a hangup signal"). Either the operator's own command
 * (`ssh.sshdReloadCommand`, e.g. `systemctl reload ssh`), or SIGHUP to the
 * pid in `ssh.sshdPidFile` once `sshd -t` accepts the configuration (a
 * listener re-executed with a broken one would exit). And ssh-keyscan, to
 * see what sshd serves: the referee of whether the reload took.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export type SshdReloadSettings =
  | { readonly command: string }
  | { readonly pidFile: string; readonly sshdPath: string; readonly sshdConfig: string };

export class SshdReloadError extends Error {
  override name = 'SshdReloadError';
}

function run(file: string, args: readonly string[], timeoutMs: number): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, [...args], { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** The first non-empty line of TEXT, for an error that names sshd's complaint without dumping its output. */
function firstLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).find((l) => l !== '') ?? '';
}

/** Reloads sshd as SETTINGS say; rejects with SshdReloadError saying why (nothing was signalled then). */
export async function reloadSshd(settings: SshdReloadSettings, timeoutMs = 30_000): Promise<void> {
  if ('command' in settings) {
    const done = await run('/bin/sh', ['-c', settings.command], timeoutMs);
    if (done.code !== 0) throw new SshdReloadError(`ssh.sshdReloadCommand exited ${done.code}: ${firstLine(done.stderr) || firstLine(done.stdout)}`);
    return;
  }
  const test = await run(settings.sshdPath, ['-t', '-f', settings.sshdConfig], timeoutMs);
  if (test.code !== 0) throw new SshdReloadError(`sshd -t -f ${settings.sshdConfig} refused the configuration: ${firstLine(test.stderr)}`);
  const text = await readFile(settings.pidFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new SshdReloadError(`cannot read ssh.sshdPidFile ${settings.pidFile}: ${err.code ?? err.message}`);
  });
  const pid = /^\s*(\d+)\s*$/.exec(text)?.[1];
  if (!pid || Number(pid) <= 1) throw new SshdReloadError(`ssh.sshdPidFile ${settings.pidFile} holds no pid`);
  try {
    process.kill(Number(pid), 'SIGHUP');
  } catch (err) {
    throw new SshdReloadError(`SIGHUP to sshd (pid ${pid}) failed: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

export interface ServedHostKeys {
  /** Ed25519 public key lines ("ssh-ed25519 AAAA…"). */
  readonly keys: string[];
  /** Ed25519 host certificate lines' algorithm and base64. */
  readonly certificates: string[];
}

/** `ssh-keyscan` lines → "keytype base64": keys come as "host keytype base64", certificates (-c) without the host. */
function scannedLines(stdout: string): string[] {
  return stdout.split('\n').flatMap((line) => {
    if (line.startsWith('#')) return [];
    const parts = line.trim().split(/\s+/);
    const at = parts.findIndex((p) => /^(ssh|ecdsa|sk)-/.test(p));
    return at === -1 || parts[at + 1] === undefined ? [] : [`${parts[at]} ${parts[at + 1]}`];
  });
}

/** What sshd on HOST:PORT presents (its Ed25519 key and certificate); null when it cannot be reached. */
export async function scanHostKeys(host: string, port: number, timeoutSeconds = 5): Promise<ServedHostKeys | null> {
  const args = ['-T', String(timeoutSeconds), '-t', 'ed25519', '-p', String(port)];
  const plain = await run('ssh-keyscan', [...args, host], (timeoutSeconds + 5) * 1000);
  const keys = scannedLines(plain.stdout);
  if (keys.length === 0) return null;
  // sshd answered: a certificate scan that gets nothing is asked once more before it counts (a loaded
  // machine can miss keyscan's timeout once; a false "not served" would ask for a reload for nothing).
  let certs = await run('ssh-keyscan', ['-c', ...args, host], (timeoutSeconds + 5) * 1000);
  if (scannedLines(certs.stdout).length === 0) certs = await run('ssh-keyscan', ['-c', ...args, host], (timeoutSeconds + 5) * 1000);
  return { keys, certificates: scannedLines(certs.stdout) };
}

/** "type base64" of an OpenSSH key or certificate line (the comment dropped). */
export function keyLineCore(line: string): string {
  return line.trim().split(/\s+/).slice(0, 2).join(' ');
}
