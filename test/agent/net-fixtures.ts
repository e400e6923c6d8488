/**
 * Network fixtures for the agent's tests: port pools below the ephemeral
 * range (so no outgoing connection can take a tunnel port), a TCP proxy that
 * can cut or silently drop traffic (a network drop without FIN), an sshd
 * run on the files a broker in OpenSSH mode writes, and a second SSH node
 * for a broker (an embedded gateway with its host key and user CA).
 */
import { spawn } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { loadKeyPair } from '../../ca/index.js';
import { OPENSSH_FILES } from '../../broker/openssh/config-files.js';
import { killSessionsHoldingPorts } from '../../broker/openssh/session-killer.js';
import { dataPaths, type TestBroker } from '../../testkit/broker.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { startGatewayEnv, type GatewayEnv } from '../../testkit/gateway.js';

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * SIZE consecutive free ports in 22000-29999 (below Linux's ephemeral range
 * 32768-60999, and apart from the fixed ranges other tests use), at a random
 * place so that test files running side by side do not collide.
 */
export async function freePool(size: number): Promise<{ first: number; last: number }> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const first = 22000 + Math.floor(Math.random() * (8000 - size));
    let ok = true;
    for (let p = first; p < first + size && ok; p++) ok = await canListen(p);
    if (ok) return { first, last: first + size - 1 };
  }
  throw new Error('no free port pool');
}

/**
 * A free port for a server the test starts later (sshd, a restarted broker):
 * from the same range as freePool, not a kernel-chosen ephemeral port, which
 * any outgoing connection may take in the meantime.
 */
export async function freePort(): Promise<number> {
  return (await freePool(1)).first;
}

export type ProxyMode = 'pass' | 'blackhole' | 'refuse';

/**
 * A TCP proxy on 127.0.0.1 in front of TARGET. "blackhole" stops relaying in
 * both directions and keeps every socket open (a cable pulled somewhere on
 * the way: no FIN, no RST); "refuse" closes new connections at once.
 */
export class FaultProxy {
  mode: ProxyMode = 'pass';
  readonly #pairs = new Set<[Socket, Socket]>();
  readonly #server: Server;
  port = 0;

  constructor(public target: number) {
    this.#server = createServer((client) => this.#onClient(client));
  }

  async listen(port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, '127.0.0.1', () => resolve());
    });
    const address = this.#server.address();
    this.port = typeof address === 'object' && address ? address.port : 0;
    return this.port;
  }

  #onClient(client: Socket): void {
    client.on('error', () => undefined);
    if (this.mode === 'refuse') return void client.destroy();
    const upstream = connect({ host: '127.0.0.1', port: this.target });
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const forget = (): void => {
      this.#pairs.delete(pair);
    };
    client.once('close', () => {
      forget();
      if (this.mode !== 'blackhole') upstream.destroy();
    });
    upstream.once('close', () => {
      forget();
      if (this.mode !== 'blackhole') client.destroy();
    });
    if (this.mode === 'blackhole') {
      client.pause();
      return;
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Stop relaying without closing anything. */
  blackhole(): void {
    this.mode = 'blackhole';
    for (const [a, b] of this.#pairs) {
      a.unpipe(b);
      b.unpipe(a);
      a.pause();
      b.pause();
    }
  }

  /** Back to normal for new connections (blackholed ones stay dead). */
  pass(): void {
    this.mode = 'pass';
  }

  /** Cuts every current connection (RST to both sides), as a NAT or link reset does. */
  resetAll(): void {
    for (const [a, b] of this.#pairs) {
      a.destroy();
      b.destroy();
    }
    this.#pairs.clear();
  }

  get connections(): number {
    return this.#pairs.size;
  }

  async close(): Promise<void> {
    for (const [a, b] of this.#pairs) {
      a.destroy();
      b.destroy();
    }
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

export interface BrokerSshd {
  readonly port: number;
  /** The sshd_config it runs (what the broker's ssh.sshdConfig names, for `sshd -t` before a reload). */
  readonly configPath: string;
  output(): string;
  stop(): Promise<void>;
}

/**
 * sshd on 127.0.0.1:PORT configured by nothing but the broker's OpenSSH-mode
 * files in DATADIR/openssh (plus what any test sshd needs). DATADIR is made
 * searchable: sshd reads the principals file as the device user. EXTRA
 * lines replace `PidFile none` (e.g. a PidFile for ssh.sshdPidFile).
 */
export async function startBrokerSshd(dataDir: string, port: number, pool: { first: number; last: number }, extra: readonly string[] = ['PidFile none']): Promise<BrokerSshd> {
  await ensureGatewayUsers(['tunnel', 'operator']);
  await chmod(dataDir, 0o755);
  const configPath = join(dataDir, 'sshd_config.test');
  await writeFile(configPath, [
    `Include ${join(dataDir, 'openssh', OPENSSH_FILES.config)}`,
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    ...extra,
    'UsePAM no',
    'StrictModes no',
    'LogLevel VERBOSE',
    '',
  ].join('\n'));
  const child = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let log = '';
  child.stdout.on('data', (c: Buffer) => (log += c.toString()));
  child.stderr.on('data', (c: Buffer) => (log += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`sshd did not start:\n${log}`)), 10_000);
    const check = setInterval(() => {
      if (log.includes(`Server listening on 127.0.0.1 port ${port}`)) {
        clearTimeout(deadline);
        clearInterval(check);
        resolve();
      }
    }, 20);
    child.once('exit', (code) => {
      clearTimeout(deadline);
      clearInterval(check);
      reject(new Error(`sshd exited with ${code}:\n${log}`));
    });
  });
  return {
    port,
    configPath,
    output: () => log,
    async stop() {
      // Per-connection children call setsid(): end those holding pool ports, then the master's group.
      killSessionsHoldingPorts(Array.from({ length: pool.last - pool.first + 1 }, (_, i) => pool.first + i));
      try {
        if (child.pid) process.kill(-child.pid, 'SIGTERM');
      } catch {
        // gone
      }
      await exited;
    },
  };
}

/**
 * A second node's SSH server for broker B on 127.0.0.1:PORT: a real embedded
 * gateway with B's host key and trusting B's user CA, as the nodes of a
 * fleet share them (it knows no revocations: the tests that use it revoke
 * nothing).
 */
export async function startPeerGateway(b: TestBroker, port: number): Promise<GatewayEnv> {
  const hostKey = await loadKeyPair(dataPaths(b.dir).hostKey);
  return startGatewayEnv({ hostKey, ca: b.broker.core.trustRoots.current().signingUserCa, port });
}
