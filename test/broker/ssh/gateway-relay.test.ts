/**
 * Backpressure both ways through a tunnel, with the OpenSSH client as the
 * device: a stalled reader never makes the gateway read everything.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { PortBlock } from '../../../ca/index.js';
import { freePortBlock, startGatewayEnv, type GatewayEnv } from '../../../testkit/gateway.js';
import { spawnSsh, waitFor } from '../../../testkit/ssh-client.js';

const MiB = 1024 * 1024;
const CHUNK = randomBytes(MiB);
const TOTAL_CHUNKS = 96;
const TOTAL = TOTAL_CHUNKS * MiB;
const EXPECTED_SHA256 = (() => {
  const h = createHash('sha256');
  for (let i = 0; i < TOTAL_CHUNKS; i++) h.update(CHUNK);
  return h.digest('hex');
})();

/**
 * Waits until READ stops growing (unchanged over several polls), and
 * returns it. A plateau, not a deadline: how long it takes does not matter.
 */
async function plateau(read: () => number): Promise<number> {
  let last = -1;
  let steady = 0;
  await waitFor(() => {
    const now = read();
    steady = now === last && now > 0 ? steady + 1 : 0;
    last = now;
    return steady >= 8;
  }, 'the transfer to stall', 30_000);
  return last;
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

/** Hashes everything SOCKET delivers from now on; resolves at its end. */
function drain(socket: Socket): Promise<{ bytes: number; sha256: string }> {
  const h = createHash('sha256');
  let bytes = 0;
  return new Promise((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      h.update(chunk);
      bytes += chunk.length;
    });
    socket.once('end', () => resolve({ bytes, sha256: h.digest('hex') }));
    socket.resume();
  });
}

async function withTunnelTo(port: number, fn: (env: GatewayEnv, block: PortBlock) => Promise<void>): Promise<void> {
  const env = await startGatewayEnv();
  const block = await freePortBlock(1);
  const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
  const ssh = spawnSsh([...env.args(await env.identity('dev-1', key, cert)), '-N', '-R', `127.0.0.1:${block.first}:127.0.0.1:${port}`]);
  try {
    await waitFor(() => env.gateway.stats().forwardsActive === 1, 'the tunnel');
    await fn(env, block);
  } finally {
    await ssh.stop();
    await env.close();
  }
}

test('backpressure toward the device: a device that stops reading stops the gateway reading', async (t) => {
  let deviceSide: Socket | undefined;
  const device = createServer({ pauseOnConnect: true }, (socket) => (deviceSide = socket));
  const devicePort = await listen(device);
  try {
    await withTunnelTo(devicePort, async (env, block) => {
      const client = connect({ host: '127.0.0.1', port: block.first });
      client.on('error', () => undefined);
      for (let i = 0; i < TOTAL_CHUNKS; i++) client.write(CHUNK);
      client.end();
      const read = await plateau(() => env.gateway.stats().bytesOut);
      t.log(`gateway read ${(read / MiB).toFixed(1)} MiB of ${TOTAL / MiB} MiB while the device was not reading`);
      t.true(read < TOTAL / 2);
      await waitFor(() => deviceSide !== undefined, 'the device connection');
      const got = await drain(deviceSide!);
      t.deepEqual(got, { bytes: TOTAL, sha256: EXPECTED_SHA256 }, 'nothing lost once it reads again');
    });
  } finally {
    deviceSide?.destroy();
    device.close();
  }
});

test('backpressure from the device: a client that stops reading stops the device sending', async (t) => {
  const device = createServer((socket) => {
    socket.on('error', () => undefined);
    for (let i = 0; i < TOTAL_CHUNKS; i++) socket.write(CHUNK);
    socket.end();
  });
  const devicePort = await listen(device);
  try {
    await withTunnelTo(devicePort, async (env, block) => {
      const client = connect({ host: '127.0.0.1', port: block.first });
      client.on('error', () => undefined);
      client.pause();
      const read = await plateau(() => env.gateway.stats().bytesIn);
      t.log(`gateway took ${(read / MiB).toFixed(1)} MiB of ${TOTAL / MiB} MiB from the device while the client was not reading`);
      t.true(read < TOTAL / 2);
      const got = await drain(client);
      t.deepEqual(got, { bytes: TOTAL, sha256: EXPECTED_SHA256 }, 'nothing lost once it reads again');
    });
  } finally {
    device.close();
  }
});
