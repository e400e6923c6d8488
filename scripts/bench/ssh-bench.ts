/**
 * The SSH data plane, side by side: the embedded gateway (broker/ssh, in a
 * child process of its own so that its memory can be read apart) and a real
 * sshd configured only by the files broker/openssh writes (OpenSSH mode, the
 * conformance suite's sshd driver). The device is the real OpenSSH `ssh`
 * client (`ssh -N -R`), its service a loopback sink/source/echo server in
 * this process; for the idle-tunnel memory phase the devices are ssh2
 * clients with the agent's certificate shim, many in this process.
 *
 *   node --import tsx scripts/bench/ssh-bench.ts [--quick]
 *
 * Needs Linux and root (sshd switches to the tunnel user). Bounded: every
 * phase has a deadline, the whole run stops after 15 minutes, and every ssh,
 * sshd and gateway process it started is killed on the way out (sshd's
 * per-connection children call setsid, so they are found as descendants of
 * the sshd master and killed by pid).
 *
 * The pieces are in ssh/: settings.ts (sizes, pool, deadlines), targets.ts
 * (the two servers; child-gateway.ts is the gateway's process), services.ts
 * and devices.ts (the device side), one file per phase (throughput.ts,
 * latency.ts, handshakes.ts, idle.ts) run in order by run.ts, report.ts
 * (what is printed) and processes.ts (/proc: memory, the final sweep).
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createWorld } from '../../testkit/conformance/world.js';
import { killStarted } from './ssh/processes.js';
import { describeMachine, describeMethod, loadAverage, report } from './ssh/report.js';
import type { Rig } from './ssh/rig.js';
import { runBench } from './ssh/run.js';
import { startServices, type Services } from './ssh/services.js';
import { POOL, sizesFor, TOTAL_DEADLINE_MS } from './ssh/settings.js';
import { startEmbedded, startOpenssh } from './ssh/targets.js';

const sizes = sizesFor(process.argv.includes('--quick'));

async function main(): Promise<void> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) throw new Error('needs Linux and root (sshd switches to the tunnel user)');
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-ssh-bench-'));
  await chmod(dir, 0o755); // sshd reads the principals files as the tunnel user
  const services = await startServices(sizes.throughputBytes);
  stopOnDeadlineOrSignal(dir, services);
  const stops: Array<() => Promise<void>> = [];
  try {
    const blocks = Math.floor((POOL.last - POOL.first + 1) / POOL.perDevice);
    const world = await createWorld(dir, { first: POOL.first, blocks, perDevice: POOL.perDevice });
    const rig: Rig = { world, dir, services, sizes };
    const embedded = await startEmbedded(world, dir);
    stops.push(embedded.stop);
    const openssh = await startOpenssh(world);
    stops.push(openssh.stop);
    const loadBefore = await loadAverage();
    // The idle phase gets a fresh gateway process (run.ts says why); sshd
    // forks a process per connection, so the running one serves.
    const [gw, sshd] = await runBench(rig, [embedded.target, openssh.target], [
      () => startEmbedded(world, dir),
      async () => ({ target: openssh.target, stop: async () => undefined }),
    ]);
    process.stdout.write(`\n${await describeMachine()}\n`);
    process.stdout.write(`${describeMethod(sizes)}\n\n`);
    process.stdout.write(`${report(gw!, sshd!)}\n`);
    process.stdout.write(`\nload average before: ${loadBefore}, after: ${await loadAverage()}\n`);
  } finally {
    for (const stop of stops.reverse()) await stop().catch((err: unknown) => process.stderr.write(`stop: ${String(err)}\n`));
    await cleanup(dir, services);
  }
}

/** Past TOTAL_DEADLINE_MS, or on Ctrl-C, everything started is killed and the directory removed. */
function stopOnDeadlineOrSignal(dir: string, services: Services): void {
  const deadline = setTimeout(() => {
    process.stderr.write('ssh-bench: over the total deadline, stopping\n');
    void cleanup(dir, services).finally(() => process.exit(2));
  }, TOTAL_DEADLINE_MS);
  deadline.unref();
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void cleanup(dir, services).finally(() => process.exit(130)));
}

let cleaned: Promise<void> | undefined;

function cleanup(dir: string, services: Services): Promise<void> {
  cleaned ??= (async () => {
    await killStarted();
    await services.close();
    await rm(dir, { recursive: true, force: true });
  })();
  return cleaned;
}

await main();
