/**
 * Connections nobody has authenticated, against a real broker: sockets held
 * open on the API port (per source, TLS handshake and header timeouts) and
 * the SSH side's start-up limits as config.json sets them. Other loopback
 * addresses (127.0.0.2, …) are other sources: Linux routes all of 127/8 to lo.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { waitFor } from '../../../testkit/ssh-client.js';

interface RawSocket {
  readonly socket: Socket;
  isClosed(): boolean;
  /** Bytes received so far. */
  received(): string;
}

/** A TCP connection to PORT from LOCALADDRESS that sends nothing. */
function idleSocket(port: number, localAddress: string): RawSocket {
  const socket = connect({ host: '127.0.0.1', port, localAddress });
  let closed = false;
  let text = '';
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.once('close', () => (closed = true));
  return { socket, isClosed: () => closed, received: () => text };
}

/** N idle sockets from LOCALADDRESS, once each is connected or closed. */
async function idleSockets(port: number, localAddress: string, n: number): Promise<RawSocket[]> {
  const sockets = Array.from({ length: n }, () => idleSocket(port, localAddress));
  await waitFor(() => sockets.every((s) => s.isClosed() || (s.socket.remoteAddress !== undefined && !s.socket.connecting)), `${n} sockets from ${localAddress}`, 30_000);
  return sockets;
}

/** GET /healthz from LOCALADDRESS; the status, or the error's code. */
async function healthFrom(b: TestBroker, localAddress: string): Promise<number | string> {
  const url = new URL('/healthz', b.broker.apiUrl);
  const https = url.protocol === 'https:';
  const ca = https ? await readFile(dataPaths(b.dir).tlsCert, 'utf8') : undefined;
  return new Promise((resolve) => {
    const req = (https ? httpsRequest : httpRequest)(url, { agent: false, localAddress, ...(https ? { ca, servername: 'localhost' } : {}) }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    req.end();
  });
}

test('fail/idle sockets: one address cannot hold the API port; another is still answered', async (t) => {
  await withBroker(async (b) => {
    // Default limit 100 per source: 130 sockets that never start TLS.
    const held = await idleSockets(b.broker.apiPort, '127.0.0.2', 130);
    try {
      await waitFor(() => held.filter((s) => s.isClosed()).length >= 30, 'the sockets beyond the per-source limit to be closed', 30_000).catch(() => undefined);
      t.is(held.filter((s) => !s.isClosed()).length, 100, 'the source keeps its 100, no more');
      t.is(await healthFrom(b, '127.0.0.3'), 200, 'another address is answered');
      t.is(await healthFrom(b, '127.0.0.2'), 'ECONNRESET', 'the full source is refused at once');
    } finally {
      held.forEach((s) => s.socket.destroy());
    }
  });
});

test('fail/slow TLS handshake: a socket that never starts TLS is closed after the handshake timeout (default 10 s)', async (t) => {
  await withBroker(async (b) => {
    const [idle] = await idleSockets(b.broker.apiPort, '127.0.0.4', 1);
    try {
      // Node's own default is 120 s.
      await waitFor(() => idle!.isClosed(), 'the handshake timeout', 40_000).catch(() => undefined);
      t.true(idle!.isClosed());
    } finally {
      idle!.socket.destroy();
    }
  });
});

/** A TLS connection (or plain, with api.insecureHttp) from LOCALADDRESS; resolves once it may send. */
async function openSession(b: TestBroker, localAddress: string): Promise<RawSocket> {
  const url = new URL(b.broker.apiUrl);
  const port = Number(url.port);
  if (url.protocol === 'http:') return (await idleSockets(port, localAddress, 1))[0]!;
  const ca = await readFile(dataPaths(b.dir).tlsCert, 'utf8');
  const socket = tlsConnect({ socket: connect({ host: '127.0.0.1', port, localAddress }), servername: 'localhost', ca });
  let closed = false;
  let text = '';
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.once('close', () => (closed = true));
  await new Promise<void>((resolve) => socket.once('secureConnect', resolve));
  return { socket, isClosed: () => closed, received: () => text };
}

for (const insecureHttp of [false, true]) {
  test(`fail/slow headers (${insecureHttp ? 'HTTP' : 'HTTPS'}): nothing, or headers a byte at a time, is closed after api.headersTimeoutSeconds`, async (t) => {
    await withBroker(async (b) => {
      const silent = await openSession(b, '127.0.0.5');
      const dribbling = await openSession(b, '127.0.0.5');
      const request = 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ' + 'a'.repeat(1000);
      let sent = 0;
      const drip = setInterval(() => dribbling.socket.write(request[sent++ % request.length]!), 200);
      try {
        await waitFor(() => silent.isClosed() && dribbling.isClosed(), 'both to be closed', 30_000).catch(() => undefined);
        t.true(silent.isClosed(), 'a connection that says nothing');
        t.true(dribbling.isClosed(), `a connection dribbling its headers (${sent} bytes sent)`);
        t.notRegex(dribbling.received(), /200 OK/);
        t.is(await healthFrom(b, '127.0.0.5'), 200, 'the same address is answered when it asks properly');
      } finally {
        clearInterval(drip);
        silent.socket.destroy();
        dribbling.socket.destroy();
      }
    }, { config: { api: { headersTimeoutSeconds: 2, ...(insecureHttp ? { insecureHttp: true, trustProxy: false } : {}) } } });
  });
}

test('ok/api.maxConnectionsPerSource and the keep-alive timeout come from config.json; with trustProxy the per-source cap is off', async (t) => {
  await withBroker(async (b) => {
    const held = await idleSockets(b.broker.apiPort, '127.0.0.6', 3);
    try {
      await waitFor(() => held.some((s) => s.isClosed()), 'the third socket to be closed', 30_000).catch(() => undefined);
      t.deepEqual(held.map((s) => s.isClosed()), [false, false, true]);
      t.is(b.logs.filter((l) => l.includes('api connection refused')).length, 1);
    } finally {
      held.forEach((s) => s.socket.destroy());
    }
    // A keep-alive connection that finished its request is closed once idle.
    const kept = await openSession(b, '127.0.0.7');
    kept.socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await waitFor(() => kept.received().includes('200 OK'), 'the answer');
    await waitFor(() => kept.isClosed(), 'the idle keep-alive connection to be closed', 30_000).catch(() => undefined);
    t.true(kept.isClosed());
  }, { config: { api: { maxConnectionsPerSource: 2, keepAliveTimeoutSeconds: 1 } } });

  await withBroker(async (b) => {
    const held = await idleSockets(b.broker.apiPort, '127.0.0.6', 5);
    try {
      t.is(await healthFrom(b, '127.0.0.6'), 200, 'behind a proxy every peer is the proxy: no per-source cap');
      t.false(held.some((s) => s.isClosed()));
    } finally {
      held.forEach((s) => s.socket.destroy());
    }
  }, { config: { api: { maxConnectionsPerSource: 2, insecureHttp: true, trustProxy: true } } });
});

test('ok/the SSH side takes ssh.perSourceMaxStartups from config.json', async (t) => {
  await withBroker(async (b) => {
    const held = await idleSockets(b.broker.sshPort, '127.0.0.8', 3);
    try {
      await waitFor(() => held.some((s) => s.isClosed()), 'the third connection to be closed', 30_000).catch(() => undefined);
      t.deepEqual(held.map((s) => s.isClosed()), [false, false, true]);
      await waitFor(() => held[0]!.received().startsWith('SSH-2.0-'), 'the banner of a held one');
      // Another source still gets the banner.
      const other = (await idleSockets(b.broker.sshPort, '127.0.0.9', 1))[0]!;
      await waitFor(() => other.received().startsWith('SSH-2.0-'), 'the banner for another source');
      other.socket.destroy();
    } finally {
      held.forEach((s) => s.socket.destroy());
    }
  }, { config: { ssh: { perSourceMaxStartups: 2 } } });
});
