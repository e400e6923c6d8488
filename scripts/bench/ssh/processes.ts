/**
 * The processes a run starts, and what they hold in memory, from Linux
 * /proc. Every child is recorded as it starts, and every sshd pid as it is
 * seen, so that the way out (the end, the deadline, Ctrl-C) kills them all:
 * sshd's per-connection children call setsid, so they are found as
 * descendants of the sshd master and killed by pid.
 */
import type { ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';

const started = new Set<ChildProcess>();
/** Every sshd pid seen (master and per-connection children), for the final sweep. */
const sshdPids = new Set<number>();

/** Records CHILD until it closes, so that killStarted() reaches it. */
export function trackChild(child: ChildProcess): void {
  started.add(child);
  child.once('close', () => started.delete(child));
}

export function recordSshd(pids: readonly number[]): void {
  for (const pid of pids) sshdPids.add(pid);
}

/** Pids of ROOT's descendants, from /proc/<pid>/stat (sshd's per-connection children are in other sessions, not other trees). */
export async function descendants(root: number): Promise<number[]> {
  const parent = new Map<number, number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const m = /\) \S (\d+)/.exec(stat);
    if (m) parent.set(Number(name), Number(m[1]));
  }
  const out: number[] = [];
  const frontier = [root];
  while (frontier.length > 0) {
    const p = frontier.pop()!;
    for (const [child, ppid] of parent) {
      if (ppid === p) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}

export interface Memory {
  readonly rssKiB: number;
  readonly pssKiB: number;
  readonly processes: number;
}

/** RSS (VmRSS) and PSS (smaps_rollup) summed over PIDS; a pid that is gone is not counted. */
export async function memoryOf(pids: readonly number[]): Promise<Memory> {
  let rssKiB = 0;
  let pssKiB = 0;
  let processes = 0;
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(status);
    const pss = /^Pss:\s+(\d+) kB/m.exec(rollup);
    if (!rss || !pss) continue;
    rssKiB += Number(rss[1]);
    pssKiB += Number(pss[1]);
    processes += 1;
  }
  return { rssKiB, pssKiB, processes };
}

/** SIGKILL to every child still recorded and every sshd seen. */
export async function killStarted(): Promise<void> {
  for (const child of started) child.kill('SIGKILL');
  // By the pids recorded (and whatever the recorded ones forked since), and
  // only if each is still an sshd (a pid may have been reused).
  for (const pid of [...sshdPids]) for (const child of await descendants(pid)) sshdPids.add(child);
  for (const pid of sshdPids) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('sshd') || cmdline.startsWith('/usr/sbin/sshd')) process.kill(pid, 'SIGKILL');
  }
}
