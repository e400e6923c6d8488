/**
 * A small fleet for operator-access tests: a real broker (withBroker, embedded
 * gateway) whose pool is a block of ports free right now, devices enrolled
 * over its API, and for each connected device a real `ssh -R` tunnel holding
 * its ssh slot (to a real sshd, when asked) and its http slot (to a small
 * HTTP service that reports what it received and speaks the WebSocket
 * handshake).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type Agent, type IncomingMessage, type Server } from 'node:http';
import { request as httpsRequest, type Agent as HttpsAgent } from 'node:https';
import type { Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, type KeyPair } from '../ca/index.js';
import type { EnrollResponse } from '../api/index.js';
import { OPENSSH_FILES } from '../broker/openssh/config-files.js';
import { killSessionsHoldingPorts } from '../broker/openssh/session-killer.js';
import { ensureGatewayUsers } from './conformance/sshd-driver.js';
import { withBroker, type BrokerFixtureOptions, type TestBroker } from './broker.js';
import { freePortBlock, isListening } from './gateway.js';
import { makeOpensshKey } from './openssh.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts, type SshProcess } from './ssh-client.js';
import { startSshd, type RunningSshd } from './sshd.js';

export const DOMAIN = 'fleet.test';

export interface HttpService {
  readonly port: number;
  /** Requests the device's service received (headers as the device saw them). */
  readonly requests: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: string }>;
  /** TCP connections it accepted (each one an SSH channel through the tunnel). */
  connections(): number;
  /** Bytes `/big` has handed to its socket so far (it honours backpressure). */
  bigWritten(): number;
  /**
   * `/stream` writes its next chunk only when this is called (the reader got
   * the previous one), so a proxy that buffered the response would hold the
   * stream up; after 20 s without a call it writes the rest anyway and
   * `streamStalled()` turns true.
   */
  streamNext(): void;
  streamStalled(): boolean;
  close(): Promise<void>;
}

/** What `/big` repeats: 1 MiB of random bytes. */
export const BIG_BLOCK = randomBytes(1024 * 1024);
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/**
 * A device's web service: `/echo` answers JSON of what it got; `/stream`
 * sends three chunks, each after the reader got the last (`streamNext`); `/set-cookie` tries to set the broker's session
 * cookie; `/big?mib=N` sends N MiB of a repeating 1 MiB block as fast as
 * its reader takes them; an Upgrade: websocket request is answered 101 (RFC 6455 section
 * 4.2.2) and then every byte is echoed.
 */
export async function startHttpService(label: string): Promise<HttpService> {
  const requests: HttpService['requests'] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  let bigWritten = 0;
  let streamWaiter: (() => void) | undefined;
  let stalled = false;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        const next = (n: number): void => {
          res.write(`chunk ${n}\n`);
          if (n === 2) return void res.end();
          const timer = setTimeout(() => {
            stalled = true;
            streamWaiter?.();
          }, 20_000);
          streamWaiter = () => {
            streamWaiter = undefined;
            clearTimeout(timer);
            next(n + 1);
          };
        };
        next(0);
        return;
      }
      if (req.url?.startsWith('/big?mib=')) {
        const total = Number(req.url.slice('/big?mib='.length));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total * BIG_BLOCK.length) });
        let sent = 0;
        const more = (): void => {
          while (sent < total) {
            sent += 1;
            bigWritten += BIG_BLOCK.length;
            if (!res.write(BIG_BLOCK)) return void res.once('drain', more);
          }
          res.end();
        };
        more();
        return;
      }
      if (req.url === '/set-cookie') {
        res.setHeader('set-cookie', ['__Host-certunnel=evil; Path=/; Secure', 'device=1; Path=/']);
        res.end('ok');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'x-device': label });
      res.end(JSON.stringify({ device: label, method: req.method, url: req.url, headers: req.headers, bodyBytes: Buffer.byteLength(body), bodySha256: createHash('sha256').update(body).digest('hex') }));
    });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: '' });
    const key = String(req.headers['sec-websocket-key'] ?? '');
    const accept = createHash('sha1').update(key + WS_GUID).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nX-Device: ${label}\r\n\r\n`);
    if (head.length) socket.write(head);
    socket.pipe(socket);
  });
  server.on('connection', (s: Socket) => {
    connections += 1;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    requests,
    connections: () => connections,
    bigWritten: () => bigWritten,
    streamNext: () => streamWaiter?.(),
    streamStalled: () => stalled,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface FleetDevice {
  readonly name: string;
  readonly key: KeyPair;
  readonly grant: EnrollResponse;
  readonly http?: HttpService;
  /** Where the tunnel's http slot leads instead of `http` (a hostile service in a test). */
  readonly httpTarget?: number;
  readonly sshd?: RunningSshd;
  /** The `ssh -R` device client, while connected. */
  tunnel?: SshProcess;
}

export interface Fleet {
  readonly b: TestBroker;
  /** A key the device sshds accept (in their authorized_keys), and a known_hosts with their host keys under the device names. */
  readonly login: { keyPath: string; knownHosts: string };
  readonly devices: Map<string, FleetDevice>;
  /** Enrolls a device; with `connect`, starts its services and tunnel. */
  enroll(name: string, options?: { connect?: boolean; sshd?: boolean; httpTarget?: number }): Promise<FleetDevice>;
  connect(device: FleetDevice): Promise<void>;
  disconnect(device: FleetDevice): Promise<void>;
}

export interface FleetOptions {
  /** Devices the pool must hold (default 6). */
  readonly capacity?: number;
  /** Runs after the broker started, before any device: e.g. a system sshd for OpenSSH mode. Returns its teardown. */
  readonly before?: (b: TestBroker) => Promise<() => Promise<void>>;
  readonly config?: Record<string, unknown>;
  readonly logLevel?: string;
}

/** Whether this machine can run a system sshd for OpenSSH mode (Linux, root, /usr/sbin/sshd). */
export const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/sbin/sshd');

/**
 * Fleet options for a broker in OpenSSH mode: a real system sshd on a free
 * port, configured only by the files the broker writes, holds the devices'
 * tunnels (needs CAN_RUN_SSHD).
 */
export async function opensshFleetOptions(): Promise<FleetOptions> {
  const sshPort = (await freePortBlock(1)).first;
  return {
    config: { ssh: { mode: 'openssh', listen: `127.0.0.1:${sshPort}` } },
    before: async (broker) => {
      await ensureGatewayUsers(['tunnel', 'operator']);
      // sshd reads the principals files as the connecting user: the data directory must be searchable.
      await chmod(broker.dir, 0o755);
      const sshd = await startSshd({
        // Port is cumulative in sshd_config: the broker's SSH port, besides the helper's own.
        config: [`Include ${join(broker.dir, broker.broker.core.config.ssh.opensshDir, OPENSSH_FILES.config)}`, `Port ${sshPort}`],
      });
      return async () => {
        const pool = broker.broker.core.config.ports;
        killSessionsHoldingPorts(Array.from({ length: pool.last - pool.first + 1 }, (_, i) => pool.first + i));
        await sshd.stop();
      };
    },
  };
}

export async function withFleet<T>(fn: (fleet: Fleet) => Promise<T>, options: FleetOptions = {}): Promise<T> {
  const capacity = options.capacity ?? 6;
  const pool = await freePortBlock(capacity * 2);
  const brokerOptions: BrokerFixtureOptions = {
    config: { domain: DOMAIN, ports: { first: pool.first, last: pool.last, perDevice: 2 }, ...options.config },
    logLevel: options.logLevel ?? 'info',
  };
  return withBroker(async (b) => {
    const devices = new Map<string, FleetDevice>();
    const cleanups: Array<() => Promise<void>> = [];
    const login = await makeOpensshKey(b.dir, 'operator-login');
    const loginKnownHosts = join(b.dir, 'device_known_hosts');
    await writeFile(loginKnownHosts, '');
    const authorizedKeys = join(b.dir, 'authorized_keys');
    await writeFile(authorizedKeys, `${login.publicKeyLine}\n`);
    const brokerKnownHosts = join(b.dir, 'broker_known_hosts');

    const fleet: Fleet = {
      b,
      login: { keyPath: login.path, knownHosts: loginKnownHosts },
      devices,
      async enroll(name, o = {}) {
        const minted = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
        const key = generateKeyPair();
        const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: minted.tokens[0]!.token, publicKey: formatPublicKey(key.publicKey), name });
        const http = await startHttpService(name);
        cleanups.push(() => http.close());
        let sshd: RunningSshd | undefined;
        if (o.sshd) {
          sshd = await startSshd({ config: [`AuthorizedKeysFile ${authorizedKeys}`, 'PermitRootLogin prohibit-password'] });
          cleanups.push(() => sshd!.stop());
          const hostKey = (await readFile(`${sshd.hostKeyPath}.pub`, 'utf8')).trim().split(' ').slice(0, 2).join(' ');
          await writeFile(loginKnownHosts, `${name} ${hostKey}\n`, { flag: 'a' });
        }
        const device: FleetDevice = { name, key, grant, http, httpTarget: o.httpTarget, sshd };
        devices.set(name, device);
        if (o.connect) await fleet.connect(device);
        return device;
      },
      async connect(device) {
        const { grant } = device;
        await writeKnownHosts(brokerKnownHosts, '127.0.0.1', grant.ssh.port, parsePublicKey(grant.ssh.hostKey));
        const identity = await writeClientIdentity(b.dir, `device-${device.name}`, device.key, parseCertificateLine(grant.certificate));
        const forwards = ['-R', `127.0.0.1:${grant.ports.first + 1}:127.0.0.1:${device.httpTarget ?? device.http!.port}`];
        if (device.sshd) forwards.push('-R', `127.0.0.1:${grant.ports.first}:127.0.0.1:${device.sshd.port}`);
        const ssh = spawnSsh([...sshArgs({ port: grant.ssh.port, knownHosts: brokerKnownHosts, identity, user: grant.ssh.username }), '-N', '-o', 'ExitOnForwardFailure=yes', ...forwards]);
        device.tunnel = ssh;
        cleanups.push(() => ssh.stop().then(() => undefined));
        const want = device.sshd ? 2 : 1;
        const presence = b.broker.ssh.presence;
        if (!presence) {
          // OpenSSH mode: sshd holds the ports; the broker sees nothing.
          const ports = device.sshd ? [grant.ports.first, grant.ports.first + 1] : [grant.ports.first + 1];
          await waitFor(async () => (await Promise.all(ports.map(isListening))).every(Boolean) || ssh.child.exitCode !== null, `the tunnel of ${device.name}`);
          if (ssh.child.exitCode !== null) throw new Error(`tunnel of ${device.name} failed: ${ssh.stderr()}`);
          return;
        }
        await waitFor(() => (presence.forwardedPorts(grant.deviceId)?.length ?? 0) === want || ssh.child.exitCode !== null, `the tunnel of ${device.name}`);
        if (ssh.child.exitCode !== null) throw new Error(`tunnel of ${device.name} failed: ${ssh.stderr()}`);
        // The gateway writes presence to the store asynchronously.
        await waitFor(async () => (await b.broker.store.findDevice(grant.deviceId))?.online === true, `${device.name} online in the store`);
      },
      async disconnect(device) {
        await device.tunnel?.stop();
        device.tunnel = undefined;
        await waitFor(() => (b.broker.ssh.presence?.forwardedPorts(device.grant.deviceId)?.length ?? 0) === 0, `${device.name} offline`);
        await waitFor(async () => (await b.broker.store.findDevice(device.grant.deviceId))?.online === false, `${device.name} offline in the store`);
      },
    };
    try {
      if (options.before) cleanups.push(await options.before(b));
      return await fn(fleet);
    } finally {
      for (const c of cleanups.reverse()) await c().catch(() => undefined);
    }
  }, brokerOptions);
}

export interface DeviceResponse {
  readonly status: number;
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
}

export interface DeviceRequestOptions {
  readonly method?: string;
  readonly path?: string;
  readonly headers?: Record<string, string>;
  readonly body?: string | Buffer;
  readonly agent?: Agent | HttpsAgent;
}

/**
 * A request for `<name>.<domain>` at BASEURL (the broker, or an nginx in front
 * of it): TCP to the URL's address, Host and TLS SNI naming the device, the
 * server certificate checked against CA (the broker's own, which must cover
 * *.<domain>).
 */
export async function deviceRequest(baseUrl: string, name: string, o: DeviceRequestOptions = {}, ca?: string): Promise<DeviceResponse> {
  const url = new URL(baseUrl);
  const host = `${name}.${DOMAIN}`;
  const hostHeader = `${host}:${url.port}`;
  const https = url.protocol === 'https:';
  const options = {
    host: url.hostname, port: Number(url.port), method: o.method ?? 'GET', path: o.path ?? '/echo',
    headers: { host: hostHeader, ...o.headers }, agent: o.agent ?? false,
    ...(https ? { servername: host, ca } : {}),
  };
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}
