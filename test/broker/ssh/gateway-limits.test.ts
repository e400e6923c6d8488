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
function rawConnection(port: number): { banner: () => string; closed: Promise<void>; destroy: () => void } {
  const socket = connect({ host: '127.0.0.1', port });
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { banner: () => text, closed, destroy: () => socket.destroy() };
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
