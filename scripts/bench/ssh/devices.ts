/**
 * The devices of ssh-bench: a key and a device certificate per port block,
 * and the real OpenSSH client (`ssh -v -N -R`) holding a tunnel to a target
 * until the server confirmed every forward.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatCertificate, generateKeyPair, saveKeyPair, signDeviceCert, type KeyPair, type PortBlock } from '../../../ca/index.js';
import { sshArgs } from '../../../testkit/ssh-client.js';
import { trackChild } from './processes.js';
import type { Rig } from './rig.js';
import type { Target } from './targets.js';

export interface DeviceFiles {
  readonly key: KeyPair;
  readonly certLine: string;
  readonly keyPath: string;
  readonly certPath: string;
  readonly block: PortBlock;
}

/** A device key and certificate for BLOCK; with WRITE, as files for `ssh` too. */
export async function issueDevice(rig: Rig, block: PortBlock, write: boolean): Promise<DeviceFiles> {
  const key = generateKeyPair();
  const serial = rig.world.nextSerial();
  const cert = signDeviceCert({ ca: rig.world.userCa, publicKey: key.publicKey, deviceId: `bench${serial}`, ports: block, serial, now: new Date(), validitySeconds: 7200 });
  const keyPath = join(rig.dir, `dev-${serial}`);
  const certPath = `${keyPath}-cert.pub`;
  const certLine = formatCertificate(cert);
  if (write) {
    await saveKeyPair(keyPath, key);
    await writeFile(certPath, `${certLine}\n`);
  }
  return { key, certLine, keyPath, certPath, block };
}

export interface SshTunnel {
  readonly child: ChildProcess;
  /** ms from spawn to the last "remote forward success". */
  readonly boundAfterMs: number;
  readonly stderr: string;
  stop(): Promise<void>;
}

/** `ssh -v -N -R …` until every forward is confirmed; rejects if ssh exits first. */
export function openTunnel(target: Target, dev: DeviceFiles, forwards: ReadonlyArray<[port: number, to: number]>, extra: readonly string[] = []): Promise<SshTunnel> {
  const args = ['-v', '-N', ...sshArgs({ port: target.port, knownHosts: target.knownHosts, identity: dev }), '-o', 'ExitOnForwardFailure=yes', ...extra];
  for (const [port, to] of forwards) args.push('-R', `127.0.0.1:${port}:127.0.0.1:${to}`);
  args.push('127.0.0.1');
  const t0 = performance.now();
  const child = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  trackChild(child);
  let stderr = '';
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('close', () => resolve());
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ssh did not bind within 15 s: ${stderr.split('\n').slice(-3).join(' | ')}`));
    }, 15_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
      if ((stderr.match(/^debug1: remote forward success for: /gm)?.length ?? 0) >= forwards.length) {
        clearTimeout(timer);
        resolve({ child, boundAfterMs: performance.now() - t0, stderr, stop });
      }
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`ssh exited ${code}: ${stderr.split('\n').filter((l) => !l.startsWith('debug')).slice(-3).join(' | ')}`));
    });
  });
}

/** The key exchange and cipher ssh reports at -v. */
export function negotiated(stderr: string): { kex: string; cipher: string } {
  return {
    kex: /^debug1: kex: algorithm: (\S+)/m.exec(stderr)?.[1] ?? '?',
    cipher: /^debug1: kex: server->client cipher: (\S+)/m.exec(stderr)?.[1] ?? '?',
  };
}
