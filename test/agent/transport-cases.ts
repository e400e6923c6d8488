/**
 * The same cases for both transports (transport-ssh2.test.ts,
 * transport-openssh.test.ts): real sockets against the embedded gateway and
 * a real sshd; every failure must come back with its transport code.
 */
import type { TestFn } from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  encodePrivateKey, formatCertificate, formatPublicKey, generateKeyPair, parsePublicKey, signDeviceCert,
  type Certificate, type KeyPair, type PortBlock, type PublicKey,
} from '../../ca/index.js';
import { renderKnownHosts } from '../../agent/state-dir.js';
import { TransportError, type Transport, type Tunnel, type TunnelEnd, type TunnelSpec } from '../../agent/transport.js';
import { exchange, isListening, startDeviceService, startGatewayEnv, type DeviceService, type GatewayEnv } from '../../testkit/gateway.js';
import { sshKeygenOk, withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { startSshd } from '../../testkit/sshd.js';
import { within } from './fixtures.js';
import { FaultProxy, freePool, freePort } from './net-fixtures.js';

export const KEEPALIVE = { intervalMs: 1000, countMax: 2 };

interface Target {
  readonly host: string;
  readonly port: number;
  readonly username: string;
  readonly hostKey: PublicKey;
  readonly hostCa?: PublicKey;
}

/** Writes key, certificate and known_hosts into DIR and returns the spec for TARGET. */
async function specFor(dir: string, target: Target, key: KeyPair, cert: Certificate, forwards: TunnelSpec['forwards'], port = target.port): Promise<TunnelSpec> {
  const keyPath = join(dir, `key-${cert.serial}`);
  await writeFile(keyPath, encodePrivateKey(key), { mode: 0o600 });
  const certificatePath = `${keyPath}-cert.pub`;
  await writeFile(certificatePath, `${formatCertificate(cert)}\n`);
  const knownHostsPath = join(dir, `known_hosts-${cert.serial}-${port}`);
  await writeFile(knownHostsPath, renderKnownHosts({
    host: target.host, port, username: target.username, hostKey: formatPublicKey(target.hostKey),
    hostCertificateAuthority: formatPublicKey(target.hostCa ?? generateKeyPair().publicKey),
  }));
  return {
    host: target.host, port, username: target.username, key, keyPath, certificateLine: formatCertificate(cert), certificatePath,
    hostKey: target.hostKey, knownHostsPath, forwards,
    keepaliveIntervalMs: KEEPALIVE.intervalMs, keepaliveCountMax: KEEPALIVE.countMax, connectTimeoutMs: 5000,
  };
}

function forwardsTo(block: PortBlock, ssh: DeviceService, http: DeviceService): TunnelSpec['forwards'] {
  return [
    { name: 'ssh', remotePort: block.first, localHost: '127.0.0.1', localPort: ssh.port },
    { name: 'http', remotePort: block.first + 1, localHost: '127.0.0.1', localPort: http.port },
  ];
}

async function refusal(promise: Promise<Tunnel>): Promise<string> {
  try {
    const tunnel = await promise;
    await tunnel.close();
    return 'CONNECTED';
  } catch (err) {
    return err instanceof TransportError ? err.code : `not a TransportError: ${String(err)}`;
  }
}

interface GatewayRig {
  readonly env: GatewayEnv;
  readonly block: PortBlock;
  readonly ssh: DeviceService;
  readonly http: DeviceService;
  readonly target: Target;
  readonly key: KeyPair;
  readonly cert: Certificate;
  spec(overrides?: Partial<TunnelSpec> & { port?: number }): Promise<TunnelSpec>;
}

async function withGateway(fn: (g: GatewayRig) => Promise<void>): Promise<void> {
  const env = await startGatewayEnv();
  const ssh = await startDeviceService('ssh:');
  const http = await startDeviceService('http:');
  try {
    const block = await freePool(2);
    const { key, cert } = env.deviceCert({ deviceId: 'dev_a', block });
    const target: Target = { host: '127.0.0.1', port: env.port, username: 'tunnel', hostKey: env.hostKey.publicKey };
    await fn({
      env, block, ssh, http, target, key, cert,
      spec: async (o = {}) => ({ ...(await specFor(env.dir, target, key, cert, forwardsTo(block, ssh, http), o.port)), ...o }),
    });
  } finally {
    await env.close();
    await ssh.close();
    await http.close();
  }
}

export function registerTransportCases(test: TestFn, transport: Transport): void {
  const name = transport.name;

  test(`${name}: ok/gateway: both forwards reach the local services; a service that is down costs only its connection`, async (t) => {
    await withGateway(async (g) => {
      const tunnel = await transport.open(await g.spec());
      try {
        t.is((await exchange(g.block.first, 'one')).toString(), 'ssh:one');
        t.is((await exchange(g.block.last, 'two')).toString(), 'http:two');
        t.is(g.env.gateway.stats().tunnelsConnected, 1);
        const big = Buffer.alloc(512 * 1024, 7);
        t.is((await exchange(g.block.first, big)).length, big.length + 'ssh:'.length);
        await g.http.close();
        t.is((await exchange(g.block.last, 'lost').catch(() => Buffer.alloc(0))).toString(), '', 'the broker-side connection just closes');
        t.is((await exchange(g.block.first, 'still')).toString(), 'ssh:still', 'the tunnel is still up');
      } finally {
        await tunnel.close();
      }
      t.is((await tunnel.closed).code, 'CLOSED');
      await waitFor(async () => !(await isListening(g.block.first)), 'the broker port is free again', 5000);
    });
  });

  test(`${name}: fail/gateway: a broker with another host key is refused before authentication`, async (t) => {
    await withGateway(async (g) => {
      const spoof = await startGatewayEnv();
      try {
        // The same CA signed the device certificate (the spoof even trusts it): only the host key differs.
        const spec = await specFor(g.env.dir, g.target, g.key, g.cert, forwardsTo(g.block, g.ssh, g.http), spoof.port);
        t.is(await refusal(transport.open(spec)), 'HOST_KEY_MISMATCH');
        const stats = spoof.gateway.stats();
        t.is(stats.tunnelsConnected, 0);
        t.deepEqual(stats.authFailures, {}, 'no authentication attempt reached the spoofed broker');
        t.false(spoof.audits.some((a) => a.action === 'ssh.auth'));
        t.false(await isListening(g.block.first));
      } finally {
        await spoof.close();
      }
    });
  });

  test(`${name}: fail/gateway: certificate from another CA is AUTH_REFUSED; a port outside the block is FORWARD_REFUSED; nothing listening is UNREACHABLE`, async (t) => {
    await withGateway(async (g) => {
      const other = g.env.deviceCert({ deviceId: 'dev_a', block: g.block, key: g.key, ca: generateKeyPair() });
      const foreign = await specFor(g.env.dir, g.target, g.key, other.cert, forwardsTo(g.block, g.ssh, g.http));
      t.is(await refusal(transport.open(foreign)), 'AUTH_REFUSED');
      const outside = await g.spec({ forwards: [{ name: 'x', remotePort: g.block.last + 1, localHost: '127.0.0.1', localPort: g.ssh.port }] });
      t.is(await refusal(transport.open(outside)), 'FORWARD_REFUSED');
      t.is(g.env.gateway.stats().forwardsRefused.PORT_NOT_OWNED, 1);
      t.is(await refusal(transport.open(await g.spec({ port: await freePort() }))), 'UNREACHABLE');
    });
  });

  test(`${name}: ok/gateway: a stale session holding the ports is taken over at once`, async (t) => {
    await withGateway(async (g) => {
      const proxy = new FaultProxy(g.env.port);
      await proxy.listen();
      const first = await transport.open(await g.spec({ port: proxy.port, keepaliveIntervalMs: 60_000 }));
      try {
        proxy.blackhole(); // the first session is now half dead: the gateway still counts it
        const started = Date.now();
        const second = await transport.open(await g.spec());
        t.true(Date.now() - started < 3000, 'no waiting for the stale session to time out');
        try {
          t.is((await exchange(g.block.first, 'new')).toString(), 'ssh:new');
          await waitFor(() => g.env.gateway.stats().tunnelsConnected === 1, 'one session left', 5000);
        } finally {
          await second.close();
        }
      } finally {
        await first.close();
        await proxy.close();
      }
    });
  });

  test(`${name}: ok/network drop without FIN: keepalives notice within the configured interval`, async (t) => {
    await withGateway(async (g) => {
      const proxy = new FaultProxy(g.env.port);
      await proxy.listen();
      try {
        const tunnel = await transport.open(await g.spec({ port: proxy.port }));
        proxy.blackhole();
        const dropped = Date.now();
        const bound = KEEPALIVE.intervalMs * (KEEPALIVE.countMax + 1) + 2500;
        const end = await within<TunnelEnd | null>(tunnel.closed, bound, null);
        await tunnel.close();
        t.truthy(end, `the tunnel was not declared dead within ${bound} ms`);
        t.is(end?.code, 'KEEPALIVE_TIMEOUT');
        t.log(`${name}: dead tunnel noticed after ${Date.now() - dropped} ms (interval ${KEEPALIVE.intervalMs} ms x ${KEEPALIVE.countMax})`);
      } finally {
        await proxy.close();
      }
    });
  });

  test(`${name}: ok/sshd: tunnel up through a real sshd; a port held by another session is FORWARD_REFUSED`, async (t) => {
    await withTempDir(async (dir) => {
      const ca = generateKeyPair();
      const caPub = join(dir, 'user_ca.pub');
      await writeFile(caPub, `${formatPublicKey(ca.publicKey)}\n`);
      const block = await freePool(2);
      await writeFile(join(dir, 'principals'), `restrict,port-forwarding,permitlisten="127.0.0.1:${block.first}",permitlisten="127.0.0.1:${block.last}" ports-${block.first}-${block.last}\n`);
      await sshKeygenOk(['-q', '-k', '-f', join(dir, 'revoked.krl')]);
      const sshd = await startSshd({
        config: [
          `TrustedUserCAKeys ${caPub}`, `AuthorizedPrincipalsFile ${join(dir, 'principals')}`, `RevokedKeys ${join(dir, 'revoked.krl')}`,
          'AuthorizedKeysFile none', 'AllowTcpForwarding remote', 'PermitTTY no', 'X11Forwarding no',
        ],
      });
      const ssh = await startDeviceService('ssh:');
      const http = await startDeviceService('http:');
      try {
        const hostKeyLine = (await sshKeygenOk(['-y', '-f', sshd.hostKeyPath])).stdout.trim();
        const target: Target = { host: '127.0.0.1', port: sshd.port, username: 'root', hostKey: parsePublicKey(hostKeyLine) };
        const key = generateKeyPair();
        const cert = signDeviceCert({ ca, publicKey: key.publicKey, deviceId: 'dev_a', ports: block, serial: 7n, now: new Date() });
        const spec = await specFor(dir, target, key, cert, forwardsTo(block, ssh, http));
        const tunnel = await transport.open(spec);
        try {
          t.is((await exchange(block.first, 'a')).toString(), 'ssh:a', sshd.output());
          t.is((await exchange(block.last, 'b')).toString(), 'http:b');
          // sshd has no takeover: a second session cannot bind the ports the first holds.
          const cert2 = signDeviceCert({ ca, publicKey: key.publicKey, deviceId: 'dev_a', ports: block, serial: 8n, now: new Date() });
          t.is(await refusal(transport.open(await specFor(dir, target, key, cert2, forwardsTo(block, ssh, http)))), 'FORWARD_REFUSED');
          t.is((await exchange(block.first, 'c')).toString(), 'ssh:c', 'the first session is unaffected');
        } finally {
          await tunnel.close();
        }
      } finally {
        await ssh.close();
        await http.close();
        await sshd.stop();
      }
    });
  });
}
