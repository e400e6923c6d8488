/**
 * OpenSSH as a referee in tests: run ssh-keygen and look at its exit status
 * and output, in throwaway directories.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit status; -1 if the process was killed by a signal. */
  readonly code: number;
}

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. */
  readonly input?: Buffer | string;
  readonly cwd?: string;
  /** Added to the parent's environment. */
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * Runs a program to completion. A non-zero exit is a result, not an error
 * (ssh-keygen -Q exits 1 for REVOKED); only a failure to start throws.
 */
export function runCommand(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      resolve({
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        code: code ?? -1,
      });
    });
    // A child that exits without reading stdin would raise EPIPE here.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

export function sshKeygen(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return runCommand('ssh-keygen', args, options);
}

/** Like sshKeygen, but a non-zero exit throws with ssh-keygen's stderr (for setup steps). */
export async function sshKeygenOk(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await sshKeygen(args, options);
  if (result.code !== 0) {
    throw new Error(`ssh-keygen ${args.join(' ')} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result;
}

/** Runs FN with a fresh temporary directory that is removed afterwards, whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>, prefix = 'certunnel-test-'): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export type OpensshKeyType = 'ed25519' | 'rsa' | 'ecdsa';

/**
 * Makes an unencrypted key pair with ssh-keygen at DIR/NAME (and NAME.pub);
 * returns the private key path and the public key line.
 */
export async function makeOpensshKey(
  dir: string,
  name: string,
  type: OpensshKeyType = 'ed25519',
): Promise<{ path: string; publicKeyLine: string }> {
  const path = join(dir, name);
  const bits = type === 'rsa' ? ['-b', '2048'] : type === 'ecdsa' ? ['-b', '256'] : [];
  await sshKeygenOk(['-q', '-t', type, ...bits, '-N', '', '-C', name, '-f', path]);
  return { path, publicKeyLine: (await readFile(`${path}.pub`, 'utf8')).trim() };
}

export interface CertifyOptions {
  readonly keyId: string;
  readonly serial: bigint;
  readonly principals?: readonly string[];
  /** Host certificate instead of user certificate. */
  readonly host?: boolean;
  /** ssh-keygen -V validity, e.g. "+1h"; default: forever. */
  readonly validity?: string;
}

/** Signs PUBKEYPATH with the CA private key at CAPATH; returns the certificate path (…-cert.pub). */
export async function certifyWithSshKeygen(caPath: string, pubKeyPath: string, options: CertifyOptions): Promise<string> {
  const args = ['-q', '-s', caPath, '-I', options.keyId, '-z', options.serial.toString()];
  if (options.principals && options.principals.length > 0) args.push('-n', options.principals.join(','));
  if (options.host) args.push('-h');
  if (options.validity) args.push('-V', options.validity);
  await sshKeygenOk([...args, pubKeyPath]);
  return pubKeyPath.replace(/\.pub$/, '') + '-cert.pub';
}
