/**
 * What processes cost, from Linux /proc: CPU time (utime + stime) and read/
 * write system calls, for a process and its descendants (nginx's worker),
 * and for this process's waited-for children (a load generator run with
 * spawnSync). The benchmarks divide them by the requests a run served.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: /proc reports CPU time in these ticks. */
const TICKS_PER_SECOND = 100;

/** PID and its descendants, by pid. */
export function descendants(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const task of readdirSync(`/proc/${out[i]}/task`)) {
        const kids = readFileSync(`/proc/${out[i]}/task/${task}/children`, 'utf8').trim();
        if (kids) out.push(...kids.split(/\s+/).map(Number));
      }
    } catch {
      // gone
    }
  }
  return out;
}

function statFields(pid: number | 'self'): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

export interface Usage {
  /** CPU seconds, user + system. */
  readonly cpuSeconds: number;
  /** read(2)/write(2)-family system calls (syscr + syscw). */
  readonly syscalls: number;
}

export function usageOf(pids: readonly number[]): Usage {
  let ticks = 0;
  let syscalls = 0;
  for (const pid of pids) {
    try {
      const fields = statFields(pid);
      ticks += Number(fields[11]) + Number(fields[12]);
      const io = readFileSync(`/proc/${pid}/io`, 'utf8');
      syscalls += Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0) + Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return { cpuSeconds: ticks / TICKS_PER_SECOND, syscalls };
}

/** CPU seconds of this process's children that have been waited for. */
export function waitedChildrenCpuSeconds(): number {
  const fields = statFields('self');
  return (Number(fields[13]) + Number(fields[14])) / TICKS_PER_SECOND;
}

/**
 * Runs RUN and returns, per role (a named process tree) and for `loadgen`
 * (the waited-for children), CPU microseconds and system calls per request.
 */
export function perRequest<T>(roles: ReadonlyMap<string, number>, loadgen: string, run: () => T, requestsOf: (result: T) => number): { result: T; cpuMicros: Record<string, number>; syscalls: Record<string, number> } {
  const trees = new Map([...roles].map(([role, pid]) => [role, descendants(pid)]));
  const before = new Map([...trees].map(([role, pids]) => [role, usageOf(pids)]));
  const loadBefore = waitedChildrenCpuSeconds();
  const result = run();
  const requests = requestsOf(result);
  const cpuMicros: Record<string, number> = {};
  const syscalls: Record<string, number> = {};
  for (const [role, pids] of trees) {
    const after = usageOf(pids);
    cpuMicros[role] = Math.round(((after.cpuSeconds - before.get(role)!.cpuSeconds) * 1e7) / requests) / 10;
    syscalls[role] = Math.round(((after.syscalls - before.get(role)!.syscalls) * 100) / requests) / 100;
  }
  cpuMicros[loadgen] = Math.round(((waitedChildrenCpuSeconds() - loadBefore) * 1e7) / requests) / 10;
  return { result, cpuMicros, syscalls };
}
