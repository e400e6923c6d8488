/** What ssh-bench prints: the machine, the method, and the gateway-vs-sshd table with its goals. */
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import type { ModeResult } from './run.js';
import { HANDSHAKE_CONCURRENCY, type Sizes } from './settings.js';

function goal(met: boolean, text: string): string {
  return `${text} ${met ? 'met' : 'MISSED'}`;
}

const mb = (x: number): string => `${x.toFixed(0)} MB/s`;
const ms = (x: number): string => `${x.toFixed(3)} ms`;
const ratio = (a: number, b: number): string => `${((100 * a) / b).toFixed(0)}%`;

function throughputRows(gw: ModeResult, sshd: ModeResult): string[][] {
  const rows: string[][] = [];
  for (let i = 0; i < gw.throughput.length; i++) {
    const g = gw.throughput[i]!;
    const s = sshd.throughput[i]!;
    const label = g.cipher === s.cipher ? g.cipher : `${g.cipher} / ${s.cipher}`;
    rows.push([`throughput to device, ${label}`, mb(g.toDevice), mb(s.toDevice), ratio(g.toDevice, s.toDevice), goal(g.toDevice >= s.toDevice / 2, '>= 50%')]);
    rows.push([`throughput from device, ${label}`, mb(g.fromDevice), mb(s.fromDevice), ratio(g.fromDevice, s.fromDevice), goal(g.fromDevice >= s.fromDevice / 2, '>= 50%')]);
  }
  return rows;
}

function latencyAndHandshakeRows(gw: ModeResult, sshd: ModeResult): string[][] {
  const rows: string[][] = [
    ['latency p50, 64-byte echo', ms(gw.latency.p50), ms(sshd.latency.p50), ratio(gw.latency.p50, sshd.latency.p50), ''],
    ['latency p99, 64-byte echo', ms(gw.latency.p99), ms(sshd.latency.p99), ratio(gw.latency.p99, sshd.latency.p99), ''],
  ];
  for (const [label, g, s] of [
    ['default kex', gw.handshakes, sshd.handshakes],
    ['curve25519-sha256', gw.handshakesCurve, sshd.handshakesCurve],
  ] as const) {
    const kex = g.kex === s.kex ? g.kex : `${g.kex} / ${s.kex}`;
    rows.push([`handshakes/s (${label}: ${kex})`, `${g.perSecond.toFixed(1)}/s`, `${s.perSecond.toFixed(1)}/s`, ratio(g.perSecond, s.perSecond), '']);
    rows.push([`  median connect-to-bound`, ms(g.medianMs), ms(s.medianMs), '', '']);
  }
  return rows;
}

function idleRows(gw: ModeResult, sshd: ModeResult): string[][] {
  const rows: string[][] = [];
  for (let i = 0; i < gw.idle.length; i++) {
    const g = gw.idle[i]!;
    const s = sshd.idle[i]!;
    rows.push([`memory per idle tunnel @${g.tunnels}, RSS`, `${g.rssKiB.toFixed(0)} KiB`, `${s.rssKiB.toFixed(0)} KiB (${s.processes} procs)`, ratio(g.rssKiB, s.rssKiB), '']);
    rows.push([`memory per idle tunnel @${g.tunnels}, PSS`, `${g.pssKiB.toFixed(0)} KiB`, `${s.pssKiB.toFixed(0)} KiB`, ratio(g.pssKiB, s.pssKiB), goal(g.pssKiB <= s.pssKiB / 10, '<= 10%')]);
  }
  return rows;
}

/** The results as a Markdown table: one row per metric, the gateway beside sshd. */
export function report(gw: ModeResult, sshd: ModeResult): string {
  const rows: string[][] = [
    ['metric', gw.name, sshd.name, 'gateway / sshd', 'goal'],
    ...throughputRows(gw, sshd),
    ...latencyAndHandshakeRows(gw, sshd),
    ...idleRows(gw, sshd),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => `| ${r.map((x, c) => x.padEnd(widths[c]!)).join(' | ')} |`).join('\n');
}

/** "ssh-bench: <node>, <ssh -V>, <cpu model>, <n> CPUs". */
export async function describeMachine(): Promise<string> {
  const cpu = (await readFile('/proc/cpuinfo', 'utf8')).match(/^model name\s*:\s*(.*)$/m)?.[1] ?? '?';
  const sshV = await new Promise<string>((resolve) => {
    const c = spawn('ssh', ['-V'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let out = '';
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.on('close', () => resolve(out.trim()));
  });
  const cpus = (await readdir('/sys/devices/system/cpu')).filter((n) => /^cpu\d+$/.test(n)).length;
  return `ssh-bench: ${process.version}, ${sshV}, ${cpu}, ${cpus} CPUs`;
}

/** What each figure is, for the run's SIZES. */
export function describeMethod(sizes: Sizes): string {
  return (
    `throughput: ${sizes.throughputBytes / 1024 / 1024} MiB per transfer, median of ${sizes.throughputRuns}; latency: ${sizes.latencyRoundTrips} round trips on one connection; ` +
    `handshakes: ${sizes.handshakes} full \`ssh -N -R\` connects (certificate auth), ${HANDSHAKE_CONCURRENCY} at a time, spawn to "remote forward success"; ` +
    `memory: ssh2 clients (agent shim) holding one bound idle forward each, over a baseline with one tunnel; gateway = its process, sshd = master + every per-connection process (RSS summed, PSS from smaps_rollup summed)`
  );
}

/** The 1, 5 and 15 minute load averages. */
export async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}
