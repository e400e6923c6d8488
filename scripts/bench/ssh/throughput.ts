/**
 * Single-stream throughput through each target's tunnel: bytes from the
 * bench to the device's sink, and from the device's source back.
 */
import { connect } from 'node:net';
import { issueDevice, negotiated, openTunnel, type SshTunnel } from './devices.js';
import type { Rig } from './rig.js';
import { writeBytes, type Services } from './services.js';
import { blockAt } from './settings.js';
import { median } from './stats.js';
import type { Lane } from './targets.js';

export interface Throughput {
  readonly cipher: string;
  /** MB/s. */
  readonly toDevice: number;
  readonly fromDevice: number;
}

/** MB/s of one transfer of BYTES into the tunnel at PORT, counted by the sink at the device's end. */
async function toDevice(port: number, services: Services, bytes: number): Promise<number> {
  const ended = services.nextSinkEnd();
  const t0 = performance.now();
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.once('connect', () => writeBytes(socket, bytes));
  socket.resume();
  const received = await ended;
  const seconds = (performance.now() - t0) / 1000;
  socket.destroy();
  if (received !== bytes) throw new Error(`sink got ${received} of ${bytes} bytes`);
  return received / 1e6 / seconds;
}

/** MB/s of one transfer of BYTES out of the tunnel at PORT, sent by the source at the device's end. */
function fromDevice(port: number, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let received = 0;
    const socket = connect(port, '127.0.0.1');
    socket.on('data', (c: Buffer) => (received += c.length));
    socket.once('error', reject);
    socket.once('end', () => {
      socket.destroy();
      if (received !== bytes) return reject(new Error(`got ${received} of ${bytes} bytes`));
      resolve(received / 1e6 / ((performance.now() - t0) / 1000));
    });
  });
}

/**
 * Single-stream throughput, both targets alternating run by run (the
 * machine's other load then hits both alike): one `ssh -N -R` per target,
 * one port to the sink, one from the source; the median of the runs.
 */
export async function measureThroughput(rig: Rig, lanes: readonly Lane[], cipher: string | undefined): Promise<Throughput[]> {
  const { services, sizes } = rig;
  const tunnels: SshTunnel[] = [];
  try {
    const devs = await Promise.all(lanes.map((lane) => issueDevice(rig, blockAt(lane.offset), true)));
    for (const [i, lane] of lanes.entries()) {
      const dev = devs[i]!;
      tunnels.push(await openTunnel(lane.target, dev, [[dev.block.first, services.sink], [dev.block.last, services.source]], cipher ? ['-c', cipher] : []));
    }
    const to: number[][] = lanes.map(() => []);
    const from: number[][] = lanes.map(() => []);
    for (let run = 0; run < sizes.throughputRuns; run++) {
      for (const i of lanes.keys()) to[i]!.push(await toDevice(devs[i]!.block.first, services, sizes.throughputBytes));
      for (const i of lanes.keys()) from[i]!.push(await fromDevice(devs[i]!.block.last, sizes.throughputBytes));
    }
    return lanes.map((_, i) => ({ cipher: negotiated(tunnels[i]!.stderr).cipher, toDevice: median(to[i]!), fromDevice: median(from[i]!) }));
  } finally {
    await Promise.all(tunnels.map((t) => t.stop()));
  }
}
