/**
 * The gateway's limits: per-source connection rate, unauthenticated cap,
 * authentication timeout and attempts, methods other than publickey, and
 * keepalives that notice a device that stopped answering.
 */
import test from 'ava';
import { connect } from 'node:net';
import ssh2 from 'ssh2';
import type { AnyAuthMethod } from 'ssh2';
import { publicKeyBlob } from '../../../ca/index.js';
import { freePortBlock, isListening, startDeviceService, startGatewayEnv, type GatewayEnv } from '../../../testkit/gateway.js';
import { spawnSsh, waitFor } from '../../../testkit/ssh-client.js';

/** A raw TCP connection to the gateway: did it get the SSH version banner, and is it closed? */
function rawConnection(port: number, localAddress?: string): { banner: () => string; closed: Promise<void>; isClosed: () => boolean; destroy: () => void } {
  // Linux routes all of 127/8 to lo: another loopback address is another source.
  const socket = connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  let isClosed = false;
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  void closed.then(() => (isClosed = true));
  return { banner: () => text, closed, isClosed: () => isClosed, destroy: () => socket.destroy() };
}

/** N raw connections from LOCALADDRESS, once each has either its banner or been closed. */
async function flood(port: number, localAddress: string, n: number): Promise<Array<ReturnType<typeof rawConnection>>> {
  const conns = Array.from({ length: n }, () => rawConnection(port, localAddress));
  await waitFor(() => conns.every((c) => c.isClosed() || c.banner().startsWith('SSH-2.0-')), `${n} connections from ${localAddress} answered`, 30_000);
  return conns;
}

test('rate limit: a source beyond its burst is dropped before any SSH byte', async (t) => {
  const env = await startGatewayEnv({ limits: { perIpBurst: 2, perIpRatePerSecond: 0.001 } });
  const conns = [rawConnection(env.port), rawConnection(env.port)];
  try {
    await waitFor(() => conns.every((c) => c.banner().startsWith('SSH-2.0-certunnel')), 'two banners');
    const third = rawConnection(env.port);
    await third.closed;
    t.is(third.banner(), '');
    const fourth = rawConnection(env.port);
    await fourth.closed;
    t.deepEqual(env.gateway.stats().connectionsRefused, { RATE_LIMITED: 2 });
    t.is(env.logs.filter((l) => l.msg === 'ssh connection refused').length, 1, 'one log line per run of refusals');
  } finally {
    conns.forEach((c) => c.destroy());
    await env.close();
  }
});

test('unauthenticated cap: connections beyond it are dropped', async (t) => {
  const env = await startGatewayEnv({ limits: { maxUnauthenticated: 1 } });
  const first = rawConnection(env.port);
  try {
    await waitFor(() => first.banner().startsWith('SSH-2.0-'), 'the banner');
    const second = rawConnection(env.port);
    await second.closed;
    t.is(second.banner(), '');
    t.deepEqual(env.gateway.stats().connectionsRefused, { TOO_MANY_UNAUTHENTICATED: 1 });
    t.is(env.gateway.stats().unauthenticated, 1);
    first.destroy();
    await waitFor(() => env.gateway.stats().unauthenticated === 0, 'the slot to free');
    const third = rawConnection(env.port);
    await waitFor(() => third.banner().startsWith('SSH-2.0-'), 'a banner once the slot is free');
    third.destroy();
  } finally {
    first.destroy();
    await env.close();
  }
});

test('auth timeout: a connection that does not authenticate is dropped and audited', async (t) => {
  const env = await startGatewayEnv({ limits: { authTimeoutMs: 300 } });
  try {
    const idle = rawConnection(env.port);
    await idle.closed;
    t.deepEqual(env.gateway.stats().authFailures, { AUTH_TIMEOUT: 1 });
    t.true(env.audits.some((a) => a.action === 'ssh.auth' && a.details?.reason === 'AUTH_TIMEOUT'));
    await waitFor(() => env.gateway.stats().unauthenticated === 0, 'the slot to free');
  } finally {
    await env.close();
  }
});

/** An ssh2 client trying METHODS in order; resolves with the error that ended it. */
function tryMethods(env: GatewayEnv, methods: AnyAuthMethod[]): Promise<Error> {
  const client = new ssh2.Client();
  return new Promise((resolve) => {
    client.on('error', () => undefined);
    client.once('error', resolve);
    // A server that says SSH_MSG_DISCONNECT (BY_APPLICATION) ends the client without an error.
    client.once('close', () => resolve(new Error('disconnected')));
    client.once('ready', () => {
      client.end();
      resolve(new Error('authenticated'));
    });
    let i = 0;
    client.connect({
      host: '127.0.0.1',
      port: env.port,
      username: 'tunnel',
      hostVerifier: (key: Buffer) => key.equals(publicKeyBlob(env.hostKey.publicKey)),
      authHandler: (_left, _partial, next) => next(methods[i++] ?? (false as never)),
    });
  });
}

test('auth: none, keyboard-interactive and password are refused; too many attempts end the connection', async (t) => {
  const env = await startGatewayEnv({ limits: { maxAuthAttempts: 3 } });
  try {
    const methods: AnyAuthMethod[] = [
      { type: 'none', username: 'tunnel' },
      { type: 'keyboard-interactive', username: 'tunnel', prompt: (_n, _i, _l, _p, finish) => finish([]) },
      { type: 'password', username: 'tunnel', password: 'hunter2' },
      // Same username throughout: ssh2's server drops a client that changes it mid-authentication.
      { type: 'password', username: 'tunnel', password: 'hunter3' },
      { type: 'password', username: 'tunnel', password: 'never tried' },
    ];
    const err = await tryMethods(env, methods);
    t.not(err.message, 'authenticated');
    await waitFor(() => env.gateway.stats().connections === 0, 'the connection to close');
    // "none" is the method-list probe, not an attempt; three refusals, then the connection is dropped.
    t.deepEqual(env.gateway.stats().authFailures, { METHOD_NOT_ALLOWED: 3, TOO_MANY_ATTEMPTS: 1 });
    const refused = env.audits.filter((a) => a.action === 'ssh.auth').map((a) => a.details?.method ?? a.details?.reason);
    t.deepEqual(refused, ['keyboard-interactive', 'password', 'password', 'TOO_MANY_ATTEMPTS']);
    t.false(JSON.stringify(env.audits).includes('hunter'), 'passwords never reach the audit log');
    t.false(JSON.stringify(env.logs).includes('hunter'), 'nor the logs');
  } finally {
    await env.close();
  }
});

test('keepalive: a device that stops answering loses its session and its port', async (t) => {
  const env = await startGatewayEnv({ limits: { keepaliveIntervalMs: 200, keepaliveCountMax: 2 } });
  const svc = await startDeviceService();
  const block = await freePortBlock(2);
  const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
  const ssh = spawnSsh([...env.args(await env.identity('dev-1', key, cert)), '-N', '-R', `127.0.0.1:${block.first}:127.0.0.1:${svc.port}`]);
  try {
    await waitFor(() => env.gateway.sessions().some((s) => s.ports.includes(block.first)), 'the tunnel');
    ssh.child.kill('SIGSTOP'); // the kernel still ACKs; only SSH-level keepalives can tell
    await waitFor(() => env.gateway.stats().tunnelsConnected === 0, 'the keepalive timeout');
    t.deepEqual(env.gateway.stats().sessionsClosed, { KEEPALIVE_TIMEOUT: 1 });
    t.false(await isListening(block.first));
    t.like(env.presence.at(-1), { deviceId: 'dev-1', online: false });
  } finally {
    await ssh.stop();
    await env.close();
    await svc.close();
  }
});

test('fail closed: when isRevoked throws, the certificate is refused', async (t) => {
  const env = await startGatewayEnv({
    isRevoked: () => {
      throw new Error('revocation list unavailable');
    },
  });
  const block = await freePortBlock(2);
  const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
  const ssh = spawnSsh([...env.args(await env.identity('dev-1', key, cert)), '-N', '-R', `127.0.0.1:${block.first}:127.0.0.1:9`]);
  try {
    await waitFor(() => ssh.child.exitCode !== null || env.gateway.stats().tunnelsConnected > 0, 'a verdict');
    t.is(await ssh.exited, 255);
    t.true((env.gateway.stats().authFailures.INTERNAL_ERROR ?? 0) >= 1);
    t.is(env.gateway.stats().tunnelsConnected, 0);
    t.true(env.logs.some((l) => l.level === 'error' && l.msg === 'ssh authentication check failed'));
  } finally {
    await ssh.stop();
    await env.close();
  }
});

test('fail/flood: two addresses holding unauthenticated connections do not lock a device out', async (t) => {
  // The default 512 slots scaled down to 100, and no rate limit in the way: two
  // addresses open 60 connections each and never authenticate.
  const env = await startGatewayEnv({ limits: { maxUnauthenticated: 100, perIpBurst: 10_000, perIpRatePerSecond: 10_000 } });
  const block = await freePortBlock(2);
  const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
  const attackers = [...(await flood(env.port, '127.0.0.2', 60)), ...(await flood(env.port, '127.0.0.3', 60))];
  const ssh = spawnSsh([...env.args(await env.identity('dev-1', key, cert)), '-N', '-R', `127.0.0.1:${block.first}:127.0.0.1:9`]);
  try {
    await waitFor(() => ssh.child.exitCode !== null || env.gateway.sessions().some((s) => s.ports.includes(block.first)), 'a verdict', 30_000);
    t.true(env.gateway.sessions().some((s) => s.deviceId === 'dev-1'), `the device got in (ssh exit ${ssh.child.exitCode})`);
    t.true(attackers.filter((c) => !c.isClosed()).length <= 64, 'each address holds at most its per-source share');
    t.true((env.gateway.stats().connectionsRefused.TOO_MANY_FROM_SOURCE ?? 0) >= 2 * (60 - 32));
  } finally {
    attackers.forEach((c) => c.destroy());
    await ssh.stop();
    await env.close();
  }
});

test('early drop: past start, new connections are refused as the draw says, one log line per run', async (t) => {
  let draw = 0.99;
  const env = await startGatewayEnv({ limits: { earlyDropStart: 2, earlyDropRate: 50, maxUnauthenticated: 4 }, random: () => draw });
  const conns = [rawConnection(env.port), rawConnection(env.port)];
  try {
    await waitFor(() => conns.every((c) => c.banner().startsWith('SSH-2.0-')), 'two banners: below start, no draw');
    conns.push(rawConnection(env.port)); // 2 open: 50% drop; the draw 0.99 keeps it
    await waitFor(() => conns[2]!.banner().startsWith('SSH-2.0-'), 'the third banner');
    draw = 0.7; // 3 open: 75% drop; 0.7 drops
    const dropped = [rawConnection(env.port), rawConnection(env.port)];
    await Promise.all(dropped.map((c) => c.closed));
    t.true(dropped.every((c) => c.banner() === ''));
    t.deepEqual(env.gateway.stats().connectionsRefused, { TOO_MANY_UNAUTHENTICATED: 2 });
    t.is(env.logs.filter((l) => l.msg === 'ssh connection refused').length, 1, 'one log line per run of drops');
    draw = 0.8; // 75%: admitted
    conns.push(rawConnection(env.port));
    await waitFor(() => conns[3]!.banner().startsWith('SSH-2.0-'), 'the fourth banner');
    draw = 0; // 4 open = full: dropped whatever the draw says
    const full = rawConnection(env.port);
    await full.closed;
    t.is(env.gateway.stats().unauthenticated, 4);
  } finally {
    conns.forEach((c) => c.destroy());
    await env.close();
  }
});

test('fail/sessions: one device certificate holds at most maxSessionsPerCertificate sessions; the next is refused and audited', async (t) => {
  const env = await startGatewayEnv({ limits: { maxSessionsPerCertificate: 3 } });
  const block = await freePortBlock(2);
  const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
  const args = [...env.args(await env.identity('dev-1', key, cert)), '-N'];
  const held = [spawnSsh(args), spawnSsh(args), spawnSsh(args)];
  try {
    await waitFor(() => env.gateway.sessions().length === 3, 'three sessions', 30_000);
    const fourth = spawnSsh(args);
    held.push(fourth);
    await waitFor(() => fourth.child.exitCode !== null || env.gateway.sessions().length > 3, 'a verdict on the fourth', 30_000);
    t.is(env.gateway.sessions().length, 3, 'the fourth session is refused');
    t.is(await fourth.exited, 255);
    t.deepEqual(env.gateway.stats().authFailures, { TOO_MANY_SESSIONS: 1 });
    t.true(env.audits.some((a) => a.action === 'ssh.auth' && a.details?.reason === 'TOO_MANY_SESSIONS' && a.details?.claimedKeyId === 'device:dev-1'));
    // A session ending frees its place.
    await held[0]!.stop();
    await waitFor(() => env.gateway.sessions().length === 2, 'a session to end');
    const again = spawnSsh(args);
    held.push(again);
    await waitFor(() => env.gateway.sessions().length === 3, 'a session in the freed place', 30_000);
    t.pass();
  } finally {
    await Promise.all(held.map((s) => s.stop()));
    await env.close();
  }
});
