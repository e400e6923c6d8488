/**
 * The two servers under test, each as a Target the phases drive alike: the
 * embedded gateway in a child process (child-gateway.ts) and a real sshd
 * configured only by the files broker/openssh writes (the conformance
 * suite's sshd driver). Each reads its own memory: the gateway's process,
 * or sshd's master and every per-connection process.
 */
import { fork } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatPublicKey } from '../../../ca/index.js';
import { sshdDriver, type SshdGateway } from '../../../testkit/conformance/sshd-driver.js';
import type { World } from '../../../testkit/conformance/world.js';
import { descendants, memoryOf, recordSshd, trackChild, type Memory } from './processes.js';

export interface Target {
  readonly name: string;
  readonly port: number;
  readonly knownHosts: string;
  readonly hostKeyCheck: (key: Buffer) => boolean;
  /** Server-side memory now. */
  memory(): Promise<Memory>;
}

export type Started = { target: Target; stop(): Promise<void> };

/** One target and the blocks it may use outside the idle phase (both targets run at once, so they never share a block). */
export interface Lane {
  readonly target: Target;
  /** First block index of this lane: +0 throughput, +1 latency, +2.. handshakes. */
  readonly offset: number;
}

/** What child-gateway.ts sends once it listens. */
export interface ChildHello {
  readonly port: number;
  readonly hostKeyLine: string;
}

const CHILD_GATEWAY = fileURLToPath(new URL('./child-gateway.ts', import.meta.url));

export async function startEmbedded(world: World, dir: string): Promise<Started> {
  const child = fork(CHILD_GATEWAY, [], {
    execArgv: ['--import', 'tsx', '--expose-gc'],
    env: { ...process.env, CERTUNNEL_BENCH_GATEWAY: JSON.stringify({ userCa: formatPublicKey(world.userCa.publicKey) }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  trackChild(child);
  const hello = await new Promise<ChildHello>((resolve, reject) => {
    child.once('message', (m) => resolve(m as ChildHello));
    child.once('exit', (code) => reject(new Error(`gateway child exited ${code}`)));
  });
  const knownHosts = join(dir, `known_hosts.gateway-${hello.port}`);
  await writeFile(knownHosts, `[127.0.0.1]:${hello.port} ${hello.hostKeyLine}\n`);
  const hostBlob = Buffer.from(hello.hostKeyLine.split(' ')[1]!, 'base64');
  return {
    target: {
      name: 'embedded gateway',
      port: hello.port,
      knownHosts,
      hostKeyCheck: (key) => key.equals(hostBlob),
      async memory() {
        await new Promise<void>((resolve) => {
          child.once('message', () => resolve());
          child.send({ type: 'settle' });
        });
        return memoryOf([child.pid!]);
      },
    },
    stop: async () => {
      const exited = new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
      child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export async function startOpenssh(world: World): Promise<Started> {
  // MaxStartups: sshd's default 10:30:100 drops connections that are still
  // unauthenticated beyond 10; the idle phase connects IDLE_WAVE at a time.
  const gateway: SshdGateway = await sshdDriver({ extraConfig: ['MaxStartups 200:30:400'] }).start(world);
  const master = gateway.masterPid;
  recordSshd([master]);
  return {
    target: {
      name: 'sshd (OpenSSH mode)',
      port: gateway.target.port,
      knownHosts: world.knownHostsPath,
      hostKeyCheck: () => true, // ssh2 negotiates no host certificate; the ssh client checks the host CA
      async memory() {
        const pids = [master, ...(await descendants(master))];
        recordSshd(pids);
        return memoryOf(pids);
      },
    },
    stop: async () => {
      recordSshd(await descendants(master));
      await gateway.stop();
    },
  };
}
