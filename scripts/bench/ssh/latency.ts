/** Round-trip latency through each target's tunnel to the device's echo service. */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { issueDevice, openTunnel, type SshTunnel } from './devices.js';
import type { Rig } from './rig.js';
import { blockAt } from './settings.js';
import { percentile } from './stats.js';
import type { Lane } from './targets.js';

export interface Latency {
  /** ms. */
  readonly p50: number;
  readonly p99: number;
}

/** Round trips are taken in rounds of this many per target, the targets alternating. */
const ROUND = 100;

function connected(socket: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
}

/** ms until MESSAGE has come back whole. */
function echoRoundTrip(socket: Socket, message: Buffer): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let got = 0;
    const onData = (c: Buffer): void => {
      got += c.length;
      if (got >= message.length) {
        socket.off('data', onData);
        resolve(performance.now() - t0);
      }
    };
    socket.on('data', onData);
    socket.write(message);
  });
}

/** 64-byte round trips through each target's tunnel to the echo service, alternating in rounds of 100. */
export async function measureLatency(rig: Rig, lanes: readonly Lane[]): Promise<Latency[]> {
  const tunnels: SshTunnel[] = [];
  const sockets: Socket[] = [];
  try {
    for (const lane of lanes) {
      const dev = await issueDevice(rig, blockAt(lane.offset + 1), true);
      tunnels.push(await openTunnel(lane.target, dev, [[dev.block.first, rig.services.echo]]));
      const socket = connect(dev.block.first, '127.0.0.1');
      socket.setNoDelay(true);
      sockets.push(socket);
      await connected(socket);
    }
    const message = randomBytes(64);
    const samples: number[][] = lanes.map(() => []);
    for (const socket of sockets) for (let i = 0; i < ROUND; i++) await echoRoundTrip(socket, message); // warm-up
    for (let round = 0; round < rig.sizes.latencyRoundTrips / ROUND; round++) {
      for (const [i, socket] of sockets.entries()) for (let k = 0; k < ROUND; k++) samples[i]!.push(await echoRoundTrip(socket, message));
    }
    return samples.map((xs) => {
      const sorted = [...xs].sort((a, b) => a - b);
      return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
    });
  } finally {
    for (const socket of sockets) socket.destroy();
    await Promise.all(tunnels.map((t) => t.stop()));
  }
}
