/**
 * Conformance driver for the embedded gateway (broker/ssh): createGateway
 * with the world's user CA, a fresh host key and an in-memory revocation
 * set, on an ephemeral 127.0.0.1 port, wired the way broker/compose/ssh-side.ts
 * wires it (revocation = isRevoked for new logins + revokeDevice for the
 * live session).
 *
 * One difference from the sshd driver: ssh2's Server cannot present a host
 * certificate, so the client trusts the gateway's host key itself (a
 * known_hosts line for [127.0.0.1]:port) instead of the world's host CA.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, type PortBlock } from '../../ca/index.js';
import { createGateway, type AuditEvent, type Gateway as EmbeddedGateway, type GatewayLimits } from '../../broker/ssh/index.js';
import { blockPorts, DEVICE_LOGIN, OPERATOR_LOGIN } from '../../api/index.js';
import { type Gateway, type GatewayDriver, type World } from './world.js';

export interface EmbeddedConformanceGateway extends Gateway {
  readonly gateway: EmbeddedGateway;
  readonly audits: readonly AuditEvent[];
  /** The gateway's log lines so far, for diagnostics. */
  log(): string;
}

export interface GatewayDriverOptions {
  /** Any user name is accepted (the certificate decides); default the broker's own, tunnel and operator. */
  readonly deviceUser?: string;
  readonly operatorUser?: string;
  readonly limits?: GatewayLimits;
}

async function startGateway(world: World, options: GatewayDriverOptions): Promise<EmbeddedConformanceGateway> {
  const hostKey = generateKeyPair();
  const revoked = new Set<bigint>();
  const audits: AuditEvent[] = [];
  const lines: string[] = [];
  const logLine = (level: string) => (obj: object, msg?: string) => {
    lines.push(`${level} ${msg ?? ''} ${JSON.stringify(obj, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    if (lines.length > 2000) lines.splice(0, 1000);
  };
  const gateway = createGateway({
    hostKey,
    userCaKeys: [world.userCa.publicKey],
    // As broker/compose/ssh-side.ts passes config.ports: the blocks OpenSSH mode's principals files list.
    portPool: world.pool,
    isRevoked: (cert) => revoked.has(cert.serial),
    clock: () => new Date(),
    audit: (event) => audits.push(event),
    logger: { info: logLine('info'), warn: logLine('warn'), error: logLine('error') },
    // The table opens a few dozen connections from 127.0.0.1 in a burst;
    // the default per-source bucket (100, then 10/s) is not under test here.
    limits: { perIpBurst: 1000, perIpRatePerSecond: 1000, ...options.limits },
  });
  const { port } = await gateway.listen(0, '127.0.0.1');
  const knownHostsPath = join(world.dir, `known_hosts.gateway-${port}`);
  await writeFile(knownHostsPath, `[127.0.0.1]:${port} ${formatPublicKey(hostKey.publicKey)}\n`);
  return {
    name: 'gateway',
    gateway,
    audits,
    log: () => lines.join('\n'),
    target: { host: '127.0.0.1', port, knownHostsPath },
    deviceUser: options.deviceUser ?? DEVICE_LOGIN,
    operatorUser: options.operatorUser ?? OPERATOR_LOGIN,
    // The broker's revoke in embedded mode: the serial goes into the
    // revocation set isRevoked reads (no new logins), then the device's live
    // sessions end (broker/compose/ssh-side.ts deviceRevoked -> revokeDevice).
    async revoke(serials: readonly bigint[], blocks: readonly PortBlock[]) {
      for (const s of serials) revoked.add(s);
      const ports = new Set(blocks.flatMap(blockPorts));
      const devices = new Set(
        gateway
          .sessions()
          .filter((s) => serials.includes(s.serial) || s.ports.some((p) => ports.has(p)))
          .map((s) => s.deviceId),
      );
      for (const deviceId of devices) gateway.revokeDevice(deviceId);
    },
    stop: () => gateway.close(),
  };
}

export interface EmbeddedGatewayDriver extends GatewayDriver {
  start(world: World): Promise<EmbeddedConformanceGateway>;
}

export function gatewayDriver(options: GatewayDriverOptions = {}): EmbeddedGatewayDriver {
  return { name: 'gateway', start: (world) => startGateway(world, options) };
}
