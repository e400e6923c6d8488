/** Connection set-up cost: full `ssh -N -R` connects against each target. */
import { issueDevice, negotiated, openTunnel } from './devices.js';
import type { Rig } from './rig.js';
import { blockAt, HANDSHAKE_CONCURRENCY } from './settings.js';
import { median } from './stats.js';
import type { Lane } from './targets.js';

export interface Handshakes {
  readonly perSecond: number;
  readonly medianMs: number;
  readonly kex: string;
}

/** The targets alternate in rounds of this many connects. */
const ROUND = 10;

/**
 * Full `ssh -N -R` connects, each device with its own certificate and block,
 * HANDSHAKE_CONCURRENCY at a time, timed from spawn until the server
 * confirmed the forward; the targets alternate in rounds of 10 and each
 * one's rate is its connects over the time its own rounds took.
 */
export async function measureHandshakes(rig: Rig, lanes: readonly Lane[], extra: readonly string[]): Promise<Handshakes[]> {
  const count = rig.sizes.handshakes;
  const devices = await Promise.all(lanes.map((lane) => Promise.all(Array.from({ length: count }, (_, i) => issueDevice(rig, blockAt(lane.offset + 2 + i), true)))));
  const connectMs: number[][] = lanes.map(() => []);
  const seconds: number[] = lanes.map(() => 0);
  const kex: string[] = lanes.map(() => '?');
  for (let first = 0; first < count; first += ROUND) {
    for (const [l, lane] of lanes.entries()) {
      const round = devices[l]!.slice(first, first + ROUND);
      let next = 0;
      const t0 = performance.now();
      const worker = async (): Promise<void> => {
        while (next < round.length) {
          const dev = round[next++]!;
          const tunnel = await openTunnel(lane.target, dev, [[dev.block.first, rig.services.echo]], extra);
          connectMs[l]!.push(tunnel.boundAfterMs);
          kex[l] = negotiated(tunnel.stderr).kex;
          await tunnel.stop();
        }
      };
      await Promise.all(Array.from({ length: HANDSHAKE_CONCURRENCY }, worker));
      seconds[l]! += (performance.now() - t0) / 1000;
    }
  }
  return lanes.map((_, l) => ({ perSecond: count / seconds[l]!, medianMs: median(connectMs[l]!), kex: kex[l]! }));
}
