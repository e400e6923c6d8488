/**
 * The real OpenSSH client as a test peer: write a key, its certificate and
 * a known_hosts file, spawn `ssh` with a config that reads nothing from
 * the machine (-F /dev/null), and watch its exit status and stderr.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodePrivateKey, formatCertificate, formatPublicKey, type Certificate, type KeyPair, type PublicKey } from '../ca/index.js';

export interface ClientIdentity {
  /** Private key path (the -i argument). */
  readonly keyPath: string;
  /** Certificate path (CertificateFile), when one was written. */
  readonly certPath?: string;
}

/**
 * Writes DIR/NAME (0600), DIR/NAME.pub and, when given, DIR/NAME-cert.pub.
 * CERTLINE lets a test write a certificate line of its own (e.g. tampered).
 */
export async function writeClientIdentity(
  dir: string,
  name: string,
  key: KeyPair,
  cert?: Certificate | string,
): Promise<ClientIdentity> {
  const keyPath = join(dir, name);
  await writeFile(keyPath, encodePrivateKey(key), { mode: 0o600 });
  await writeFile(`${keyPath}.pub`, `${formatPublicKey(key.publicKey)}\n`);
  if (cert === undefined) return { keyPath };
  const certPath = `${keyPath}-cert.pub`;
  await writeFile(certPath, `${typeof cert === 'string' ? cert : formatCertificate(cert)}\n`);
  return { keyPath, certPath };
}

/** A known_hosts file naming HOSTKEY for [host]:port, so that StrictHostKeyChecking=yes passes. */
export async function writeKnownHosts(path: string, host: string, port: number, hostKey: PublicKey): Promise<string> {
  await writeFile(path, `[${host}]:${port} ${formatPublicKey(hostKey)}\n`);
  return path;
}

export interface SshArgsOptions {
  readonly port: number;
  readonly knownHosts: string;
  readonly identity: ClientIdentity;
  readonly host?: string;
  readonly user?: string;
}

/** Options every test connection shares: no user config, strict host key, only this identity, never prompt. */
export function sshArgs(options: SshArgsOptions): string[] {
  const args = [
    '-F', '/dev/null',
    '-o', `UserKnownHostsFile=${options.knownHosts}`,
    '-o', 'GlobalKnownHostsFile=/dev/null',
    '-o', 'StrictHostKeyChecking=yes',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'BatchMode=yes',
    '-o', 'ConnectTimeout=10',
    '-o', 'IdentityAgent=none',
    '-i', options.identity.keyPath,
  ];
  if (options.identity.certPath) args.push('-o', `CertificateFile=${options.identity.certPath}`);
  args.push('-p', String(options.port), '-l', options.user ?? 'tunnel');
  return args;
}

export interface SshProcess {
  readonly child: ChildProcessWithoutNullStreams;
  /** Everything written to stderr so far. */
  stderr(): string;
  stdout(): Buffer;
  /** Resolves with the exit code (-1 when killed by a signal). */
  readonly exited: Promise<number>;
  /** Ends the process if it is still running and waits for it. */
  stop(): Promise<number>;
}

/** Spawns `ssh ARGS HOST [COMMAND…]`; HOST defaults to 127.0.0.1. */
export function spawnSsh(args: readonly string[], trailing: readonly string[] = [], host = '127.0.0.1'): SshProcess {
  const child = spawn('ssh', [...args, host, ...trailing], { stdio: ['pipe', 'pipe', 'pipe'] });
  const err: Buffer[] = [];
  const out: Buffer[] = [];
  child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
  child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
  child.stdin.on('error', () => undefined);
  let code: number | undefined;
  const exited = new Promise<number>((resolve) => {
    child.on('close', (c) => {
      code = c ?? -1;
      resolve(code);
    });
  });
  return {
    child,
    stderr: () => Buffer.concat(err).toString('utf8'),
    stdout: () => Buffer.concat(out),
    exited,
    async stop() {
      if (code === undefined && child.pid !== undefined) {
        child.kill('SIGTERM');
        child.kill('SIGCONT'); // in case a test froze it
      }
      return exited;
    },
  };
}

/** Polls COND every few milliseconds until it holds; throws with LABEL after TIMEOUTMS. */
export async function waitFor(cond: () => boolean | Promise<boolean>, label: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
