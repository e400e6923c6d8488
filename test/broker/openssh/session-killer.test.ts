/**
 * The session killer without a real sshd: /proc/net/tcp{,6} parsing, with
 * fixture text captured from Linux 6.x on x86-64 (little-endian), and the
 * /proc walk over a fake /proc (a temporary directory laid out like it:
 * net/tcp, <pid>/comm, <pid>/stat, <pid>/fd/<n> links to "socket:[inode]").
 * The same code against real processes and a real sshd is in
 * test/broker/openssh/openssh-mode.test.ts.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { endianness, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  findListenerPids,
  formatIpv6,
  isLoopbackOrAny,
  killSessionsHoldingPorts,
  ListenerPidCache,
  listenerInodes,
  parseProcNetTcp,
  SSHD_SESSION_COMMANDS,
  TCP_LISTEN,
} from '../../../broker/openssh/session-killer.js';

// 0x3A98 = 15000. Rows: LISTEN 127.0.0.1:15000 (uid 999); LISTEN
// 0.0.0.0:15001; ESTABLISHED 127.0.0.1:15000 (an accepted connection on the
// same port); LISTEN 10.0.2.15:15002 (not loopback); TIME_WAIT 127.0.0.1:15000
// (inode 0); a truncated line.
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 123456 1 00000000c071dc35 100 0 0 10 0
   1: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123457 1 000000000b14d87a 100 0 0 10 0
   2: 0100007F:3A98 0100007F:D431 01 00000000:00000000 00:00000000 00000000   999        0 123458 1 00000000a089e5d5 20 4 30 10 -1
   3: 0F02000A:3A9A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123459 1 000000004320bcc3 100 0 0 10 0
   4: 0100007F:3A98 0100007F:A07D 06 00000000:00000000 03:00000C05 00000000     0        0 0 3 000000006d3db2f6
   5: 0100007F:3A9B 00000000:0000 0A
`;

// Rows: LISTEN [::1]:15555, [::ffff:127.0.0.1]:15556, [::]:15557 (captured),
// and [fe80::1]:15558 (link-local: not ours to kill).
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:3CC3 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55186 1 00000000c071dc35 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:3CC4 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55187 1 000000000b14d87a 100 0 0 10 0
   2: 00000000000000000000000000000000:3CC5 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55188 1 00000000a089e5d5 100 0 0 10 0
   3: 000080FE000000000000000001000000:3CC6 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55189 1 00000000a089e5d5 100 0 0 10 0
`;

test('ok/parses /proc/net/tcp rows, skipping the header and malformed lines', (t) => {
  const rows = parseProcNetTcp(TCP, { littleEndian: true });
  t.deepEqual(rows, [
    { address: '127.0.0.1', port: 15000, state: TCP_LISTEN, uid: 999, inode: 123456 },
    { address: '0.0.0.0', port: 15001, state: TCP_LISTEN, uid: 0, inode: 123457 },
    { address: '127.0.0.1', port: 15000, state: 0x01, uid: 999, inode: 123458 },
    { address: '10.0.2.15', port: 15002, state: TCP_LISTEN, uid: 0, inode: 123459 },
    { address: '127.0.0.1', port: 15000, state: 0x06, uid: 0, inode: 0 },
  ]);
});

test('ok/parses /proc/net/tcp6 rows, word by word in host byte order', (t) => {
  t.deepEqual(
    parseProcNetTcp(TCP6, { littleEndian: true }).map((r) => `${r.address} ${r.port} ${r.inode}`),
    ['::1 15555 55186', '::ffff:127.0.0.1 15556 55187', ':: 15557 55188', 'fe80::1 15558 55189'],
  );
});

test('ok/a big-endian host prints addresses in network order', (t) => {
  const line = '   0: 7F000001:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42 1 0 100 0 0 10 0';
  t.is(parseProcNetTcp(line, { littleEndian: false })[0]?.address, '127.0.0.1');
  t.is(parseProcNetTcp(line, { littleEndian: true })[0]?.address, '1.0.0.127');
});

test('ok/listener inodes: LISTEN only, on the asked ports, loopback or wildcard only', (t) => {
  const entries = [...parseProcNetTcp(TCP, { littleEndian: true }), ...parseProcNetTcp(TCP6, { littleEndian: true })];
  t.deepEqual([...listenerInodes(entries, new Set([15000]))], [123456]);
  t.deepEqual([...listenerInodes(entries, new Set([15001, 15002]))], [123457]);
  t.deepEqual([...listenerInodes(entries, new Set([15555, 15556, 15557, 15558]))], [55186, 55187, 55188]);
  t.deepEqual([...listenerInodes(entries, new Set([15003]))], []);
});

test('ok/address classes', (t) => {
  for (const a of ['127.0.0.1', '127.1.2.3', '0.0.0.0', '::', '::1', '::ffff:127.0.0.1', '::ffff:0.0.0.0']) t.true(isLoopbackOrAny(a), a);
  for (const a of ['10.0.2.15', '192.168.1.1', 'fe80::1', '::2', '::ffff:10.0.0.1', '2001:db8::1']) t.false(isLoopbackOrAny(a), a);
});

test('ok/IPv6 text is RFC 5952', (t) => {
  const hex = (s: string) => Buffer.from(s.replace(/:/g, ''), 'hex');
  t.is(formatIpv6(hex('2001:0db8:0000:0000:0001:0000:0000:0001')), '2001:db8::1:0:0:1');
  t.is(formatIpv6(hex('2001:0db8:0000:0001:0001:0001:0001:0001')), '2001:db8:0:1:1:1:1:1');
  t.is(formatIpv6(hex('0000:0000:0000:0000:0000:0000:0000:0000')), '::');
  t.is(formatIpv6(hex('fe80:0000:0000:0000:0000:0000:0000:0000')), 'fe80::');
});

// --- a fake /proc -------------------------------------------------------------

interface FakeProcess {
  readonly comm: string;
  /** Socket inodes among its fds (besides a pipe and /dev/null). */
  readonly sockets: readonly number[];
  /** Field 22 of stat (start time in clock ticks); default 1000. */
  readonly startTicks?: number;
}

/** A listener on 127.0.0.1:PORT with INODE, as this host's kernel prints it. */
function tcpListenLine(i: number, port: number, inode: number): string {
  const address = endianness() === 'LE' ? '0100007F' : '7F000001';
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return `  ${i}: ${address}:${hexPort} 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 ${inode} 1 0000000000000000 100 0 0 10 0`;
}

class FakeProc {
  private constructor(readonly root: string) {}

  static async create(t: { teardown(fn: () => Promise<void>): void }): Promise<FakeProc> {
    const root = await mkdtemp(join(tmpdir(), 'certunnel-fakeproc-'));
    t.teardown(() => rm(root, { recursive: true, force: true }));
    await mkdir(join(root, 'net'));
    await writeFile(join(root, 'self'), ''); // non-numeric entries are not processes
    return new FakeProc(root);
  }

  async listeners(entries: ReadonlyArray<{ port: number; inode: number }>): Promise<void> {
    const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
    await writeFile(join(this.root, 'net', 'tcp'), [header, ...entries.map((e, i) => tcpListenLine(i, e.port, e.inode))].join('\n'));
  }

  async process(pid: number, p: FakeProcess): Promise<void> {
    const dir = join(this.root, String(pid));
    await rm(dir, { recursive: true, force: true });
    await mkdir(join(dir, 'fd'), { recursive: true });
    await writeFile(join(dir, 'comm'), `${p.comm}\n`);
    // proc(5): pid (comm) state ppid ... starttime is field 22, the 20th after the comm.
    await writeFile(join(dir, 'stat'), `${pid} (${p.comm}) S 1 ${Array.from({ length: 17 }, () => '0').join(' ')} ${p.startTicks ?? 1000} 0 0\n`);
    await symlink('/dev/null', join(dir, 'fd', '0'));
    await symlink('pipe:[77]', join(dir, 'fd', '1'));
    for (const [i, inode] of p.sockets.entries()) await symlink(`socket:[${inode}]`, join(dir, 'fd', String(3 + i)));
  }

  async exit(pid: number): Promise<void> {
    await rm(join(this.root, String(pid)), { recursive: true, force: true });
  }
}

const P = 21000;

test('ok/fake proc: only sshd sessions (comm sshd or sshd-session) are looked for; without a filter every holder is found', async (t) => {
  const proc = await FakeProc.create(t);
  await proc.listeners([{ port: P, inode: 500 }, { port: P + 1, inode: 501 }, { port: P + 2, inode: 502 }, { port: P + 3, inode: 503 }]);
  await proc.process(100, { comm: 'node', sockets: [500] });
  await proc.process(150, { comm: 'sshd', sockets: [900] }); // an sshd with no listener of ours
  await proc.process(200, { comm: 'sshd', sockets: [501] });
  await proc.process(300, { comm: 'sshd-session', sockets: [502] });
  await proc.process(350, { comm: 'sshd-sessionx', sockets: [503] });
  const ports = [P, P + 1, P + 2, P + 3];
  t.deepEqual(SSHD_SESSION_COMMANDS, ['sshd', 'sshd-session']);
  t.deepEqual(findListenerPids(ports, { procRoot: proc.root, commands: SSHD_SESSION_COMMANDS }), [200, 300]);
  t.deepEqual(findListenerPids(ports, { procRoot: proc.root }), [100, 200, 300, 350]);
  t.deepEqual(findListenerPids([P + 4], { procRoot: proc.root }), [], 'nothing listens there');
  t.throws(() => findListenerPids([70000], { procRoot: proc.root }), { instanceOf: RangeError });
});

test('ok/fake proc: the scan takes the newest holder of a socket two processes share (a fresh session is among the newest pids)', async (t) => {
  const proc = await FakeProc.create(t);
  await proc.listeners([{ port: P, inode: 600 }]);
  await proc.process(300, { comm: 'sshd', sockets: [600] });
  await proc.process(4000, { comm: 'sshd', sockets: [600] }); // forked after it: the fd is inherited
  t.deepEqual(findListenerPids([P], { procRoot: proc.root, commands: SSHD_SESSION_COMMANDS }), [4000]);
});

test('ok/fake proc: a holder learnt before is asked first; an exited or reused pid is not believed, and the scan runs again', async (t) => {
  const proc = await FakeProc.create(t);
  await proc.listeners([{ port: P, inode: 700 }, { port: P + 1, inode: 701 }]);
  await proc.process(300, { comm: 'sshd', sockets: [700] });
  await proc.process(320, { comm: 'node', sockets: [701] });
  const cache = new ListenerPidCache(proc.root);
  cache.learn(new Set([700, 701]));
  t.is(cache.holder(700), 300);
  t.is(cache.holder(701), undefined, 'a holder that is not an sshd session is not learnt');

  // A newer process shares the socket: a scan would answer 4000, the cache answers 300.
  await proc.process(4000, { comm: 'sshd', sockets: [700] });
  const options = { procRoot: proc.root, commands: SSHD_SESSION_COMMANDS };
  t.deepEqual(findListenerPids([P], { ...options, cache }), [300], 'from the cache');
  t.deepEqual(findListenerPids([P], options), [4000], 'control: the scan would have found the newer one');

  // 300 exits and the pid is reused by a process without the socket: not believed, scanned for again.
  await proc.exit(300);
  await proc.process(300, { comm: 'sshd', sockets: [999] });
  t.deepEqual(findListenerPids([P], { ...options, cache }), [4000]);
  t.is(cache.holder(700), undefined, 'the stale entry is forgotten');

  // learn() forgets sockets that are gone and learns new ones.
  cache.learn(new Set([700]));
  t.is(cache.holder(700), 4000);
  cache.learn(new Set());
  await proc.process(300, { comm: 'sshd', sockets: [700] });
  t.is(cache.holder(700), undefined, 'forgotten once its listener was gone');
});

/** A real process to signal (the fake /proc names its pid); killed at teardown if still there. */
function victim(t: { teardown(fn: () => void): void }): ChildProcess & { pid: number } {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => void child.kill('SIGKILL'));
  return child as ChildProcess & { pid: number };
}

function signalOf(child: ChildProcess): Promise<NodeJS.Signals | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.signalCode);
    else child.once('exit', (_code, signal) => resolve(signal));
  });
}

test('ok/fake proc: killSessionsHoldingPorts signals the sshd holder only, and with startedBy only a session started by then', async (t) => {
  const proc = await FakeProc.create(t);
  const sshd = victim(t);
  const newer = victim(t);
  const other = victim(t);
  await proc.listeners([{ port: P, inode: 800 }, { port: P + 1, inode: 801 }, { port: P + 2, inode: 802 }]);
  await proc.process(sshd.pid, { comm: 'sshd', sockets: [800], startTicks: 1000 });
  await proc.process(newer.pid, { comm: 'sshd-session', sockets: [801], startTicks: 2000 });
  await proc.process(other.pid, { comm: 'node', sockets: [802] });
  const ports = [P, P + 1, P + 2];

  t.deepEqual(killSessionsHoldingPorts(ports, { procRoot: proc.root, startedBy: 999 }), [], 'both sessions started after 999');
  t.deepEqual(killSessionsHoldingPorts(ports, { procRoot: proc.root, startedBy: 1500 }), [sshd.pid]);
  t.is(await signalOf(sshd), 'SIGTERM');
  await proc.exit(sshd.pid);
  t.deepEqual(killSessionsHoldingPorts(ports, { procRoot: proc.root }), [newer.pid]);
  t.is(await signalOf(newer), 'SIGTERM');
  t.is(other.exitCode, null);
  t.is(other.signalCode, null, 'the holder that is not sshd was never signalled');
});
