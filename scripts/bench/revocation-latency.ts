/**
 * npm run bench:revocation: how long a revoked device's live tunnel keeps
 * its port, in both SSH modes. For each round: enroll a device over the
 * API, bring its tunnel up with the real `ssh -N -R` (to the embedded
 * gateway, or to a real sshd configured only by OpenSSH mode's files), open
 * a connection through it, then revoke the device through the API and
 * time, from the moment the request is sent:
 *
 *   refused   127.0.0.1:<port> refuses connections (the listener is gone)
 *   dropped   the connection through the tunnel is closed
 *   api       the revoke request has answered
 *
 * The broker runs in this process (testkit/broker.ts), as the tests run
 * it; the probes are a connect every few milliseconds. By default the
 * tunnel is revoked as soon as its port listens, before OpenSSH mode's
 * presence poll has seen it (the case where the broker does not yet know
 * which sshd process holds the port); --settle MS waits first.
 *
 * --load N runs N busy loops (`node -e 'for(;;);'`) for the whole run, as a
 * loaded machine; they are killed at the end.
 *
 * Usage: npm run bench:revocation [-- --rounds 15 --modes embedded,openssh --load 2 --settle 0 --json]
 * Needs: ssh; OpenSSH mode also sshd and root (skipped otherwise).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { connectDevice, enrollTestDevice, startBrokerSshd } from '../../testkit/device-tunnel.js';
import { isListening, startDeviceService, type DeviceService } from '../../testkit/gateway.js';
import { DEFAULT_SSHD } from '../../testkit/sshd-check.js';
import { arg, formatStats, stats, type Stats } from './figures.js';

const ROUNDS = Number(arg('rounds') ?? 15);
const MODES = (arg('modes') ?? 'embedded,openssh').split(',') as Mode[];
const LOAD = Number(arg('load') ?? 0);
const SETTLE_MS = Number(arg('settle') ?? 0);
const JSON_OUT = process.argv.includes('--json');
/** A round that has not seen the port refuse by then is a failure, not a figure. */
const ROUND_DEADLINE_MS = 15_000;
const PROBE_EVERY_MS = 5;

type Mode = 'embedded' | 'openssh';
const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);

interface Round {
  readonly refusedMs: number;
  readonly droppedMs: number;
  readonly apiMs: number;
}


function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** A connection through the tunnel to the device's service (which greets first): resolves once the greeting came back. */
function openThrough(port: number): Promise<{ socket: Socket; closed: Promise<number> }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const closed = new Promise<number>((r) => socket.once('close', () => r(performance.now())));
    socket.once('error', reject);
    socket.once('data', () => {
      socket.removeListener('error', reject);
      socket.on('error', () => undefined);
      resolve({ socket, closed });
    });
  });
}

/** Probes PORT until it refuses; the time it first did. */
async function refusedAt(port: number, deadline: number): Promise<number> {
  while (performance.now() < deadline) {
    if (!(await isListening(port))) return performance.now();
    await sleep(PROBE_EVERY_MS);
  }
  throw new Error(`127.0.0.1:${port} still accepts connections ${ROUND_DEADLINE_MS} ms after the revocation`);
}

async function oneRound(b: TestBroker, mode: Mode, sshPort: number, service: DeviceService, i: number): Promise<Round> {
  const device = await enrollTestDevice(b, `bench-${mode}-${i}`);
  const ssh = await connectDevice(device, sshPort, service.port);
  try {
    if (SETTLE_MS > 0) await sleep(SETTLE_MS);
    const through = await openThrough(device.port);
    const start = performance.now();
    const api = b.call(b.admin, 'POST', `/v1/devices/${device.id}/revoke`, { reason: 'bench' }).then(() => performance.now());
    const refused = await refusedAt(device.port, start + ROUND_DEADLINE_MS);
    const [apiDone, dropped] = await Promise.all([api, through.closed]);
    return { refusedMs: refused - start, droppedMs: dropped - start, apiMs: apiDone - start };
  } finally {
    await ssh.stop();
  }
}

async function runMode(mode: Mode): Promise<Round[]> {
  const config = mode === 'openssh' ? { ssh: { mode: 'openssh', listen: '127.0.0.1:0' } } : {};
  return withBroker(
    async (b) => {
      const service = await startDeviceService('hello\n');
      const sshd = mode === 'openssh' ? await startBrokerSshd(b) : undefined;
      try {
        const sshPort = sshd?.port ?? b.broker.sshPort;
        const rounds: Round[] = [];
        // One round first, not counted: the first connection pays for loading code paths.
        await oneRound(b, mode, sshPort, service, -1);
        for (let i = 0; i < ROUNDS; i++) {
          const r = await oneRound(b, mode, sshPort, service, i);
          log(`${mode} round ${i + 1}/${ROUNDS}: refused ${r.refusedMs.toFixed(0)} ms, dropped ${r.droppedMs.toFixed(0)} ms, api ${r.apiMs.toFixed(0)} ms`);
          rounds.push(r);
        }
        return rounds;
      } finally {
        await sshd?.stop();
        await service.close();
      }
    },
    { config, logLevel: 'info' },
  );
}

function busyLoops(n: number): ChildProcess[] {
  return Array.from({ length: n }, () => spawn(process.execPath, ['-e', 'for(;;);'], { stdio: 'ignore' }));
}

async function main(): Promise<void> {
  const load = busyLoops(LOAD);
  const results: Array<{ mode: Mode; load: number; rounds: number; refused: Stats; dropped: Stats; api: Stats }> = [];
  try {
    for (const mode of MODES) {
      if (mode !== 'embedded' && mode !== 'openssh') throw new Error(`unknown mode ${String(mode)} (embedded, openssh)`);
      if (mode === 'openssh' && !CAN_RUN_SSHD) {
        log('openssh: skipped (needs Linux, root and sshd)');
        continue;
      }
      const rounds = await runMode(mode);
      results.push({
        mode, load: LOAD, rounds: rounds.length,
        refused: stats(rounds.map((r) => r.refusedMs)), dropped: stats(rounds.map((r) => r.droppedMs)), api: stats(rounds.map((r) => r.apiMs)),
      });
    }
  } finally {
    for (const child of load) child.kill('SIGKILL');
  }
  if (JSON_OUT) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    return;
  }
  const ms = formatStats;
  process.stdout.write(`revocation latency, ms median/p90/max (${ROUNDS} rounds, ${LOAD} busy loops, settle ${SETTLE_MS} ms)\n`);
  process.stdout.write(`${'mode'.padEnd(10)}${'refused'.padStart(16)}${'dropped'.padStart(16)}${'api'.padStart(16)}\n`);
  for (const r of results) process.stdout.write(`${r.mode.padEnd(10)}${ms(r.refused).padStart(16)}${ms(r.dropped).padStart(16)}${ms(r.api).padStart(16)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`revocation-latency: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
