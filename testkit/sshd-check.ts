/**
 * Asks sshd itself whether a configuration is valid (`sshd -t`) and what it
 * resolves to for a given connection (`sshd -T -C`): sshd is the only
 * authority on its own grammar, including which keywords a Match block takes.
 * Both need the privilege-separation directory (/run/sshd on Debian) and
 * read access to the host keys, i.e. root in practice.
 */
import { spawn } from 'node:child_process';

export const DEFAULT_SSHD = '/usr/sbin/sshd';

export interface SshdCheckResult {
  readonly ok: boolean;
  /** sshd's diagnostics (stderr), trimmed. */
  readonly output: string;
}

export interface SshdCheckOptions {
  readonly sshdPath?: string;
}

function runSshd(sshdPath: string, args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(sshdPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** `sshd -t -f CONFIG`: exit status 0 means sshd would start with it. */
export async function checkSshdConfig(configPath: string, options: SshdCheckOptions = {}): Promise<SshdCheckResult> {
  const result = await runSshd(options.sshdPath ?? DEFAULT_SSHD, ['-t', '-f', configPath]);
  return { ok: result.code === 0, output: result.stderr.trim() };
}

export interface ConnectionSpec {
  readonly user: string;
  readonly host?: string;
  readonly addr?: string;
}

/**
 * `sshd -T -f CONFIG -C user=…,host=…,addr=…`: the effective settings for
 * such a connection, Match blocks applied. Keys are sshd's lower-case
 * keyword names; a keyword sshd prints several times (hostkey, permitlisten)
 * keeps every value.
 */
export async function effectiveSshdConfig(
  configPath: string,
  spec: ConnectionSpec,
  options: SshdCheckOptions = {},
): Promise<Map<string, string[]>> {
  const conn = `user=${spec.user},host=${spec.host ?? 'localhost'},addr=${spec.addr ?? '127.0.0.1'}`;
  const result = await runSshd(options.sshdPath ?? DEFAULT_SSHD, ['-T', '-f', configPath, '-C', conn]);
  if (result.code !== 0) throw new Error(`sshd -T exited ${result.code}: ${result.stderr.trim()}`);
  const settings = new Map<string, string[]>();
  for (const line of result.stdout.split('\n')) {
    const space = line.indexOf(' ');
    if (space <= 0) continue;
    const key = line.slice(0, space);
    const values = settings.get(key) ?? [];
    values.push(line.slice(space + 1));
    settings.set(key, values);
  }
  return settings;
}
