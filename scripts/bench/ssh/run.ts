/**
 * The phases of one run, in order: throughput (default cipher, then
 * aes128-gcm), latency, handshakes (default kex, then curve25519-sha256)
 * with both targets up and alternating, then the idle tunnels, one target
 * at a time. Every phase has a deadline.
 */
import { measureHandshakes, type Handshakes } from './handshakes.js';
import { measureIdle, waitIdlePortsFree, type IdleResult } from './idle.js';
import { measureLatency, type Latency } from './latency.js';
import type { Rig } from './rig.js';
import { PHASE_DEADLINE_MS } from './settings.js';
import type { Lane, Started, Target } from './targets.js';
import { measureThroughput, type Throughput } from './throughput.js';

export interface ModeResult {
  readonly name: string;
  readonly throughput: Throughput[];
  readonly latency: Latency;
  readonly handshakes: Handshakes;
  readonly handshakesCurve: Handshakes;
  readonly idle: IdleResult[];
}

/** RUN, announced on stderr, failed if it takes over PHASE_DEADLINE_MS. */
function phase<T>(name: string, run: () => Promise<T>): Promise<T> {
  process.stderr.write(`  ${name}…\n`);
  return Promise.race([
    run(),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${name}: over ${PHASE_DEADLINE_MS / 1000} s`)), PHASE_DEADLINE_MS).unref()),
  ]);
}

/**
 * The idle phase, one target at a time, each from FOR_IDLE: a fresh gateway
 * process, so that memory the throughput phase left in its heap is not
 * reused by the idle tunnels and hidden from the RSS delta.
 */
async function idlePhases(rig: Rig, forIdle: ReadonlyArray<() => Promise<Started>>): Promise<IdleResult[][]> {
  const idle: IdleResult[][] = [];
  for (const start of forIdle) {
    const { target, stop } = await start();
    try {
      idle.push(await phase(`idle tunnels, ${target.name} (${rig.sizes.idleSteps.join(', ')})`, () => measureIdle(rig, target)));
    } finally {
      await stop();
    }
    await waitIdlePortsFree(rig.sizes.idleSteps.at(-1)!);
  }
  return idle;
}

/** Both targets up at once; every measurement alternates between them; then the idle phase. */
export async function runBench(rig: Rig, targets: readonly Target[], forIdle: ReadonlyArray<() => Promise<Started>>): Promise<ModeResult[]> {
  const lanes: Lane[] = targets.map((target, i) => ({ target, offset: i * (2 + rig.sizes.handshakes) }));
  const throughput = [
    await phase('throughput, default cipher', () => measureThroughput(rig, lanes, undefined)),
    await phase('throughput, aes128-gcm', () => measureThroughput(rig, lanes, 'aes128-gcm@openssh.com')),
  ];
  const latency = await phase('latency', () => measureLatency(rig, lanes));
  const handshakes = await phase('handshakes, default kex', () => measureHandshakes(rig, lanes, []));
  const handshakesCurve = await phase('handshakes, curve25519-sha256', () => measureHandshakes(rig, lanes, ['-o', 'KexAlgorithms=curve25519-sha256']));
  const idle = await idlePhases(rig, forIdle);
  return targets.map((target, i) => ({
    name: target.name,
    throughput: throughput.map((t) => t[i]!),
    latency: latency[i]!,
    handshakes: handshakes[i]!,
    handshakesCurve: handshakesCurve[i]!,
    idle: idle[i]!,
  }));
}
