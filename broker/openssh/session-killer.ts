/**
 * Ends the sshd sessions that hold a revoked device's ports. sshd checks
 * RevokedKeys only when a key authenticates, so a session that is already
 * up survives a KRL change; the broker must end it itself.
 *
 * Linux only: it reads /proc/net/tcp and /proc/net/tcp6 for sockets in LISTEN
 * state on the given ports (loopback or wildcard address), then maps socket
 * inodes to processes through the /proc/<pid>/fd symlinks of the sshd
 * processes (by /proc/<pid>/comm), or asks ListenerPidCache, which OpenSSH
 * presence keeps while the tunnels are up. With privilege
 * separation the listener of a remote forward belongs to the per-connection
 * child that runs as the device user ("sshd: tunnel"), not to the sshd
 * master ("[listener]") nor to the root monitor ("[priv]"): ending that child
 * ends the connection (the monitor exits with it) and leaves the master
 * serving.
 *
 * The broker must run in sshd's network namespace (/proc/net is per
 * namespace) and as root, or with CAP_SYS_PTRACE and CAP_KILL: the child is
 * another user's process and sshd marks it non-dumpable, which makes its
 * /proc/<pid>/fd unreadable even to that user.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { isLoopbackAddress } from '../core/net-address.js';

/** include/net/tcp_states.h: TCP_LISTEN. */
export const TCP_LISTEN = 0x0a;

export interface ProcNetTcpEntry {
  /** Local address, dotted quad or compressed IPv6 (v4-mapped as ::ffff:a.b.c.d). */
  readonly address: string;
  readonly port: number;
  /** Kernel TCP state (TCP_LISTEN = 0x0A). */
  readonly state: number;
  readonly uid: number;
  /** Socket inode; /proc/<pid>/fd/N links to "socket:[inode]". 0 for sockets without one (TIME_WAIT). */
  readonly inode: number;
}

export interface ParseProcNetTcpOptions {
  /**
   * The kernel prints each 32-bit word of the address with %08X of the
   * network-order value read as a native integer, so on a little-endian host
   * every word's bytes come out reversed. Default: this host's byte order.
   */
  readonly littleEndian?: boolean;
}

const HOST_IS_LE = endianness() === 'LE';

function decodeAddressBytes(hex: string, littleEndian: boolean): Buffer | undefined {
  if ((hex.length !== 8 && hex.length !== 32) || !/^[0-9A-Fa-f]+$/.test(hex)) return undefined;
  const bytes = Buffer.from(hex, 'hex');
  if (littleEndian) for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  return bytes;
}

function formatIpv4(bytes: Buffer): string {
  return Array.from(bytes).join('.');
}

/** RFC 5952 text: longest run (>= 2) of zero groups becomes "::"; v4-mapped keeps a dotted tail. */
export function formatIpv6(bytes: Buffer): string {
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return `::ffff:${formatIpv4(bytes.subarray(12))}`;
  }
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i));
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

/**
 * Parses the text of /proc/net/tcp or /proc/net/tcp6 (the header line and
 * malformed lines are skipped). Columns: sl local_address rem_address st
 * tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
 */
export function parseProcNetTcp(text: string, options: ParseProcNetTcpOptions = {}): ProcNetTcpEntry[] {
  const littleEndian = options.littleEndian ?? HOST_IS_LE;
  const entries: ProcNetTcpEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || !/^\d+:$/.test(fields[0]!)) continue;
    const [addressHex, portHex] = fields[1]!.split(':');
    const bytes = decodeAddressBytes(addressHex ?? '', littleEndian);
    if (!bytes || !portHex || !/^[0-9A-Fa-f]{4}$/.test(portHex) || !/^[0-9A-Fa-f]{2}$/.test(fields[3]!)) continue;
    const uid = Number(fields[7]);
    const inode = Number(fields[9]);
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(inode)) continue;
    entries.push({
      address: bytes.length === 4 ? formatIpv4(bytes) : formatIpv6(bytes),
      port: parseInt(portHex, 16),
      state: parseInt(fields[3]!, 16),
      uid,
      inode,
    });
  }
  return entries;
}

/** Where a remote forward's listener can be: loopback or the wildcard address, IPv4, IPv6 or v4-mapped. */
export function isLoopbackOrAny(address: string): boolean {
  return isLoopbackAddress(address) || address === '0.0.0.0' || address === '::' || address === '::ffff:0.0.0.0';
}

/** Inodes of the LISTEN sockets on PORTS (loopback or wildcard address) among ENTRIES. */
export function listenerInodes(entries: readonly ProcNetTcpEntry[], ports: ReadonlySet<number>): Set<number> {
  const inodes = new Set<number>();
  for (const e of entries) {
    if (e.state === TCP_LISTEN && e.inode !== 0 && ports.has(e.port) && isLoopbackOrAny(e.address)) inodes.add(e.inode);
  }
  return inodes;
}

export interface ProcOptions {
  /** Default /proc; tests may point elsewhere. */
  readonly procRoot?: string;
}

/**
 * /proc/<pid>/comm of the processes that may be an sshd session: sshd
 * (through OpenSSH 9.7) and sshd-session (9.8 and later run each
 * connection's processes in that binary). The killer signals nothing else,
 * and looks into the fds of nothing else.
 */
export const SSHD_SESSION_COMMANDS: readonly string[] = ['sshd', 'sshd-session'];

function checkPorts(ports: readonly number[]): Set<number> {
  for (const port of ports) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`not a TCP port: ${port}`);
  }
  return new Set(ports);
}

/*
 * Everything below reads /proc synchronously, on purpose. /proc answers
 * from kernel memory and never waits for a disk, while fs/promises sends
 * each read through libuv's four-thread pool, queued behind whatever else
 * is there (SQLite's statements, file writes): under load one revocation's
 * reads took seconds that way (measured: 4.5 s), and /proc/net/tcp alone
 * 30-80 ms with two busy loops on the 2-core reference machine — time a
 * revoked device keeps its tunnel.
 */

function readIfPresent(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** The TCP sockets of PROCROOT/net/tcp and tcp6 (absent when IPv6 is disabled); null without /proc/net/tcp (not Linux). */
export function readTcpSockets(procRoot = '/proc', parse: ParseProcNetTcpOptions = {}): ProcNetTcpEntry[] | null {
  const v4 = readIfPresent(join(procRoot, 'net', 'tcp'));
  if (v4 === null) return null;
  return [...parseProcNetTcp(v4, parse), ...parseProcNetTcp(readIfPresent(join(procRoot, 'net', 'tcp6')) ?? '', parse)];
}

/** /proc/<pid>/comm without its newline; '' if PID is gone. */
function commandOf(procRoot: string, pid: number): string {
  try {
    return readFileSync(join(procRoot, String(pid), 'comm'), 'utf8').trim();
  } catch {
    return '';
  }
}

/** The socket inodes PID holds (readdir and readlink of /proc/<pid>/fd). */
function socketInodesOf(procRoot: string, pid: number): number[] {
  const fdDir = join(procRoot, String(pid), 'fd');
  let fds: string[];
  try {
    fds = readdirSync(fdDir);
  } catch {
    return []; // exited meanwhile, or not ours to read
  }
  const inodes: number[] = [];
  for (const fd of fds) {
    let target: string;
    try {
      target = readlinkSync(join(fdDir, fd));
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.push(Number(m[1]));
  }
  return inodes;
}

/** Whether PID holds one of INODES (the readlinks of one process). */
function holdsAny(procRoot: string, pid: number, inodes: ReadonlySet<number>): boolean {
  return socketInodesOf(procRoot, pid).some((inode) => inodes.has(inode));
}

/**
 * The process holding each of INODES: one pass over the processes' fds,
 * only those whose comm is one of COMMANDS (all when absent), newest pid
 * first, until every inode has a holder. Reading one small comm file costs
 * far less than listing a process's fds and reading each link (a node
 * process has dozens). Newest first because a listener the cache does not
 * know appeared since the last presence poll, so its sshd session is among
 * the newest processes (pids grow until they wrap, which only costs time).
 */
function scanForInodes(procRoot: string, inodes: ReadonlySet<number>, commands?: ReadonlySet<string>): Map<number, number> {
  const holders = new Map<number, number>();
  if (inodes.size === 0) return holders;
  const pids = readdirSync(procRoot)
    .filter((name) => /^\d+$/.test(name))
    .map(Number)
    .sort((a, b) => b - a);
  for (const pid of pids) {
    if (commands && !commands.has(commandOf(procRoot, pid))) continue;
    for (const inode of socketInodesOf(procRoot, pid)) if (inodes.has(inode) && !holders.has(inode)) holders.set(inode, pid);
    if (holders.size === inodes.size) break;
  }
  return holders;
}

/**
 * Which sshd session process holds each listener socket (by inode), learnt
 * ahead of time (OpenSSH presence feeds it on every poll) so that a
 * revocation signals the session it already knows instead of scanning /proc
 * while the machine may be busy: one scan per new listener, when it
 * appears, instead of one per revocation. A remembered pid is believed only
 * while it still holds the socket (pids are reused). Holders that are not
 * sshd sessions (COMMANDS) are not looked for: they are never signalled.
 */
export class ListenerPidCache {
  private readonly pids = new Map<number, number>();
  private readonly commands: ReadonlySet<string>;

  constructor(
    private readonly procRoot = '/proc',
    commands: readonly string[] = SSHD_SESSION_COMMANDS,
  ) {
    this.commands = new Set(commands);
  }

  /** Scans for the holders of INODES not known yet; forgets inodes that are not among INODES any more. */
  learn(inodes: ReadonlySet<number>): void {
    for (const inode of this.pids.keys()) if (!inodes.has(inode)) this.pids.delete(inode);
    const unknown = new Set([...inodes].filter((inode) => !this.pids.has(inode)));
    for (const [inode, pid] of scanForInodes(this.procRoot, unknown, this.commands)) this.pids.set(inode, pid);
  }

  /** The pid known to hold INODE, if it still does. */
  holder(inode: number): number | undefined {
    const pid = this.pids.get(inode);
    if (pid === undefined) return undefined;
    if (holdsAny(this.procRoot, pid, new Set([inode]))) return pid;
    this.pids.delete(inode);
    return undefined;
  }
}

export interface FindListenerOptions extends ProcOptions {
  /** Holders learnt before: asked first, so that only sockets it does not know cost a scan of /proc. */
  readonly cache?: ListenerPidCache;
  /** Look only into the fds of processes whose /proc/<pid>/comm is one of these (default: every process). */
  readonly commands?: readonly string[];
}

/** Pids of the processes that hold a LISTEN socket on one of PORTS (loopback or wildcard), ascending. */
export function findListenerPids(ports: readonly number[], options: FindListenerOptions = {}): number[] {
  const procRoot = options.procRoot ?? '/proc';
  const wanted = checkPorts(ports);
  if (wanted.size === 0) return [];
  const inodes = listenerInodes(readTcpSockets(procRoot) ?? [], wanted);
  const pids = new Set<number>();
  const unknown = new Set<number>();
  for (const inode of inodes) {
    const pid = options.cache?.holder(inode);
    if (pid === undefined) unknown.add(inode);
    else pids.add(pid);
  }
  const commands = options.commands ? new Set(options.commands) : undefined;
  for (const pid of scanForInodes(procRoot, unknown, commands).values()) pids.add(pid);
  return [...pids].sort((a, b) => a - b);
}

/** USER_HZ: /proc reports process start times in these ticks (fixed at 100 by the kernel's ABI). */
const CLOCK_TICKS_PER_SECOND = 100;

/** Now, in clock ticks since boot: the clock of /proc/<pid>/stat's starttime. */
export function ticksSinceBoot(procRoot = '/proc'): number {
  const uptime = Number(readFileSync(join(procRoot, 'uptime'), 'utf8').split(' ')[0]);
  return Math.floor(uptime * CLOCK_TICKS_PER_SECOND);
}

/** When PID started, in clock ticks since boot (proc(5): field 22 of stat); undefined if it is gone. */
function startTicksOf(procRoot: string, pid: number): number | undefined {
  const stat = readIfPresent(join(procRoot, String(pid), 'stat')) ?? undefined;
  // The command name (field 2) may contain spaces and parentheses: count from the last ")".
  const fields = stat?.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields?.[19]);
  return Number.isSafeInteger(ticks) ? ticks : undefined;
}

export interface KillSessionsOptions extends ProcOptions {
  /** Holders learnt before: asked first, so that only sockets it does not know cost a scan of /proc. */
  readonly cache?: ListenerPidCache;
  /**
   * Only sessions whose process started at or before this (ticksSinceBoot):
   * a key rotation ends the sessions made before the old key's certificates
   * were in the KRL, and spares the device's newer session.
   */
  readonly startedBy?: number;
  /** Default SIGTERM: sshd's child exits and its monitor closes the connection. */
  readonly signal?: NodeJS.Signals;
  /**
   * /proc/<pid>/comm values that may be signalled (default
   * SSHD_SESSION_COMMANDS); the scan looks only into their fds. Anything
   * else holding a pool port is not an sshd session, and killing it would
   * be a bug elsewhere turned into an outage.
   */
  readonly commands?: readonly string[];
}

/**
 * Signals the sshd session processes that listen on PORTS; returns the pids
 * signalled. A process that is gone by then is not counted. Synchronous
 * (see above): nothing between the revocation and the signal waits in a
 * queue.
 */
export function killSessionsHoldingPorts(ports: readonly number[], options: KillSessionsOptions = {}): number[] {
  const procRoot = options.procRoot ?? '/proc';
  const commands = options.commands ?? SSHD_SESSION_COMMANDS;
  const allowed = new Set(commands);
  const killed: number[] = [];
  for (const pid of findListenerPids(ports, { procRoot, cache: options.cache, commands })) {
    if (pid === 1 || pid === process.pid) continue;
    // Checked again: a pid from the cache was not filtered by the scan, and the process may have exec'd.
    if (!allowed.has(commandOf(procRoot, pid))) continue;
    if (options.startedBy !== undefined && (startTicksOf(procRoot, pid) ?? Infinity) > options.startedBy) continue;
    try {
      process.kill(pid, options.signal ?? 'SIGTERM');
      killed.push(pid);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
  return killed;
}
