/**
 * Fixtures for the embedded SSH gateway's tests: a gateway with a fresh
 * user CA and host key on an ephemeral port, recording its audit events,
 * presence updates and logs; device certificates; free port blocks; and
 * the services a device exposes through its tunnel.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fingerprint,
  generateKeyPair,
  parsePortPrincipal,
  signDeviceCert,
  signOperatorCert,
  type Certificate,
  type KeyPair,
  type PortBlock,
} from '../ca/index.js';
import { createGateway, type AuditEvent, type Gateway, type GatewayDeps, type GatewayLimits, type IssuedCertificate, type PresenceUpdate } from '../broker/ssh/index.js';
import { sshArgs, writeClientIdentity, writeKnownHosts, type ClientIdentity } from './ssh-client.js';

export interface LogLine {
  readonly level: 'info' | 'warn' | 'error';
  readonly obj: object;
  readonly msg?: string;
}

export interface GatewayEnv {
  readonly dir: string;
  readonly ca: KeyPair;
  readonly hostKey: KeyPair;
  readonly gateway: Gateway;
  readonly port: number;
  readonly knownHosts: string;
  readonly audits: AuditEvent[];
  readonly presence: PresenceUpdate[];
  readonly logs: LogLine[];
  /** Serials isRevoked() reports as revoked. */
  readonly revokedSerials: Set<bigint>;
  nextSerial(): bigint;
  deviceCert(options: { deviceId: string; block: PortBlock; key?: KeyPair; now?: Date; validitySeconds?: number; ca?: KeyPair }): {
    key: KeyPair;
    cert: Certificate;
  };
  operatorCert(options: { deviceId: string; block: PortBlock; operator?: string }): { key: KeyPair; cert: Certificate };
  /** Writes key (+ certificate) files for the OpenSSH client. */
  identity(name: string, key: KeyPair, cert?: Certificate | string): Promise<ClientIdentity>;
  /** The shared ssh options for IDENTITY against this gateway. */
  args(identity: ClientIdentity): string[];
  close(): Promise<void>;
}

export interface GatewayEnvOptions {
  readonly limits?: GatewayLimits;
  readonly clock?: () => Date;
  /** Replaces the revokedSerials lookup (e.g. with one that throws). */
  readonly isRevoked?: (cert: { serial: bigint; keyId: string }) => boolean;
  /** The random early drop's draw (GatewayDeps.random). */
  readonly random?: () => number;
  /** The store's record of a serial (GatewayDeps.lookupIssued): e.g. one from issuedRecord(), a slow one, one that throws. */
  readonly lookupIssued?: GatewayDeps['lookupIssued'];
  /** Another node of a fleet: a broker's host key and user CA instead of fresh ones, and a port chosen beforehand. */
  readonly hostKey?: KeyPair;
  readonly ca?: KeyPair;
  readonly port?: number;
}

export async function startGatewayEnv(options: GatewayEnvOptions = {}): Promise<GatewayEnv> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-gw-'));
  const ca = options.ca ?? generateKeyPair();
  const hostKey = options.hostKey ?? generateKeyPair();
  const audits: AuditEvent[] = [];
  const presence: PresenceUpdate[] = [];
  const logs: LogLine[] = [];
  const revokedSerials = new Set<bigint>();
  const clock = options.clock ?? (() => new Date());
  let serial = 1000n;
  const gateway = createGateway({
    hostKey,
    userCaKeys: [ca.publicKey],
    isRevoked: options.isRevoked ?? ((cert) => revokedSerials.has(cert.serial)),
    clock,
    audit: (event) => audits.push(event),
    presence: (update) => presence.push(update),
    logger: {
      info: (obj, msg) => logs.push({ level: 'info', obj, msg }),
      warn: (obj, msg) => logs.push({ level: 'warn', obj, msg }),
      error: (obj, msg) => logs.push({ level: 'error', obj, msg }),
    },
    limits: options.limits,
    ...(options.random ? { random: options.random } : {}),
    ...(options.lookupIssued ? { lookupIssued: options.lookupIssued } : {}),
  });
  const { port } = await gateway.listen(options.port ?? 0, '127.0.0.1');
  const knownHosts = await writeKnownHosts(join(dir, 'known_hosts'), '127.0.0.1', port, hostKey.publicKey);
  const env: GatewayEnv = {
    dir, ca, hostKey, gateway, port, knownHosts, audits, presence, logs, revokedSerials,
    nextSerial: () => ++serial,
    deviceCert(o) {
      const key = o.key ?? generateKeyPair();
      const cert = signDeviceCert({
        ca: o.ca ?? ca, publicKey: key.publicKey, deviceId: o.deviceId, ports: o.block,
        serial: env.nextSerial(), now: o.now ?? clock(), validitySeconds: o.validitySeconds ?? 3600,
      });
      return { key, cert };
    },
    operatorCert(o) {
      const key = generateKeyPair();
      const cert = signOperatorCert({
        ca, publicKey: key.publicKey, operator: o.operator ?? 'alice', deviceId: o.deviceId, ports: o.block,
        serial: env.nextSerial(), now: clock(),
      });
      return { key, cert };
    },
    identity: (name, key, cert) => writeClientIdentity(dir, name, key, cert),
    args: (identity) => sshArgs({ port, knownHosts, identity }),
    async close() {
      await gateway.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/**
 * What the store records for CERT when the broker issues it
 * (broker/core/grant.ts, operator-certificate.ts), with its device active
 * on the certificate's block; OVER replaces any part of it.
 */
export function issuedRecord(
  cert: Certificate,
  over: { certificate?: Partial<IssuedCertificate['certificate']>; device?: IssuedCertificate['device'] } = {},
): IssuedCertificate {
  const parsed = parsePortPrincipal(cert.principals[0] ?? '');
  const deviceId = /device:([^:]+)$/.exec(cert.keyId)?.[1] ?? null;
  if (!parsed || !deviceId) throw new Error(`issuedRecord: not a device or operator certificate (${cert.keyId})`);
  return {
    certificate: {
      kind: cert.keyId.startsWith('operator:') ? 'operator' : 'device',
      deviceId,
      keyFingerprint: fingerprint(cert.publicKey),
      keyId: cert.keyId,
      principal: cert.principals[0]!,
      validAfter: new Date(Number(cert.validAfter) * 1000),
      validBefore: new Date(Number(cert.validBefore) * 1000),
      revokedAt: null,
      ...over.certificate,
    },
    device: over.device !== undefined ? over.device : { id: deviceId, status: 'active', portFirst: parsed.block.first, portLast: parsed.block.last },
  };
}

function listenOn(server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
      server.off('error', reject);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    });
  });
}

const closeServer = (server: Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()));

/**
 * SIZE consecutive ports that are free right now on 127.0.0.1, picked at
 * random below the kernel's ephemeral range (32768-60999): a port from the
 * ephemeral range can be taken by any outgoing connection (an ssh client's,
 * another test's) between the probe and the gateway's bind.
 */
export async function freePortBlock(size = 2): Promise<PortBlock> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const first = TEST_PORTS_FIRST + 2 * Math.floor(Math.random() * ((TEST_PORTS_LAST - TEST_PORTS_FIRST - size) / 2));
    const servers: Server[] = [];
    try {
      for (let p = first; p < first + size; p++) {
        const server = createServer();
        servers.push(server);
        await listenOn(server, p);
      }
      return { first, last: first + size - 1 };
    } catch {
      // one of them is taken: try another
    } finally {
      await Promise.all(servers.filter((s) => s.listening).map(closeServer));
    }
  }
  throw new Error('no free port block');
}

/**
 * Where tests put tunnel ports: below the ephemeral range, above the
 * well-known services. 20000-20099 is left to the release fixtures
 * (test/fixtures/v0.2.0), whose data directories hold that pool.
 */
export const TEST_PORTS_FIRST = 20100;
export const TEST_PORTS_LAST = 32767;

export interface DeviceService {
  readonly port: number;
  /** sha256 (hex) and length of everything each finished connection received, in order. */
  readonly received: { sha256: string; bytes: number }[];
  /** Sockets currently open. */
  readonly sockets: Set<Socket>;
  close(): Promise<void>;
}

/**
 * What a device exposes through its tunnel: echoes every byte (after an
 * optional greeting, to tell two devices apart) and records a hash of what
 * it received.
 */
export async function startDeviceService(greeting?: string): Promise<DeviceService> {
  const received: { sha256: string; bytes: number }[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    socket.once('end', () => received.push({ sha256: hash.digest('hex'), bytes }));
    if (greeting) socket.write(greeting);
    socket.pipe(socket);
  });
  const port = await listenOn(server, 0);
  return {
    port, received, sockets,
    close: () => {
      for (const s of sockets) s.destroy();
      return closeServer(server);
    },
  };
}

/** Connects to 127.0.0.1:PORT, sends DATA, half-closes, and resolves with everything received until the peer ends. */
export function exchange(port: number, data: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('error', reject);
    socket.once('end', () => {
      socket.end();
      resolve(Buffer.concat(chunks));
    });
    socket.once('connect', () => socket.end(data));
  });
}

export { isListening, sha256 } from './net.js';
