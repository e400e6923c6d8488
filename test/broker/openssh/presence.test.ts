/**
 * OpenSSH-mode presence: listening sockets within a block make its device
 * online, in the store, from /proc-format files (a fixture root) and from
 * this machine's real /proc.
 */
import test from 'ava';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { listeningBlocks, OpensshPresence } from '../../../broker/openssh/presence.js';
import { TCP_LISTEN, type ProcNetTcpEntry } from '../../../broker/openssh/session-killer.js';
import type { DevicePresence } from '../../../broker/store/types.js';

const POOL = { first: 30000, last: 30099, perDevice: 4 };
const entry = (address: string, port: number, state = TCP_LISTEN): ProcNetTcpEntry => ({ address, port, state, uid: 0, inode: 1 });

test('blocks with a loopback (or wildcard) listener in the pool; connections, other addresses and ports outside do not count', (t) => {
  const blocks = listeningBlocks([
    entry('127.0.0.1', 30001), entry('::1', 30006), entry('0.0.0.0', 30011), entry('::ffff:127.0.0.1', 30099),
    entry('127.0.0.1', 30013, 0x01), entry('192.0.2.7', 30020), entry('127.0.0.1', 29999), entry('127.0.0.1', 30100),
  ], POOL);
  t.deepEqual([...blocks].sort((a, b) => a - b), [30000, 30004, 30008, 30096]);
});

test('a listener in the trailing partial block counts for no block (the allocator never hands it out)', (t) => {
  const pool = { first: 30000, last: 30009, perDevice: 4 };
  const blocks = listeningBlocks([entry('127.0.0.1', 30005), entry('127.0.0.1', 30008), entry('127.0.0.1', 30009)], pool);
  t.deepEqual([...blocks], [30004]);
});

/** The kernel's line for a listener on 127.0.0.1:PORT (little-endian host). */
function tcpLine(i: number, port: number): string {
  return `  ${i}: 0100007F:${port.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 ${1000 + i} 1 0000000000000000 100 0 0 10 0`;
}

function fakeStore(owners: Record<number, string>, initiallyOnline: string[] = []) {
  const writes: Array<[string, DevicePresence]> = [];
  return {
    writes,
    store: {
      async findActiveDeviceByPort(port: number) {
        const first = Object.keys(owners).map(Number).find((f) => port >= f && port < f + POOL.perDevice);
        return first === undefined ? null : ({ id: owners[first]! } as never);
      },
      async setDeviceOnline(id: string, p: DevicePresence) {
        writes.push([id, p]);
      },
      async listDevices() {
        return { items: initiallyOnline.map((id) => ({ id, online: true, portFirst: 30000 })) as never[], nextCursor: null };
      },
    },
  };
}

test('transitions only: online once with connected-since, offline with last seen; a stale online flag is corrected at start', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'certunnel-proc-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await mkdir(join(root, 'net'));
  const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
  const listen = (ports: number[]) => writeFile(join(root, 'net', 'tcp'), [header, ...ports.map((p, i) => tcpLine(i, p))].join('\n'));
  await listen([30005]);
  let now = new Date('2026-11-25T10:00:00Z');
  const { store, writes } = fakeStore({ 30000: 'dev_stale', 30004: 'dev_a', 30008: 'dev_b' }, ['dev_stale']);
  const presence = new OpensshPresence({ store, pool: POOL, clock: () => now, logger: createLogger('silent'), intervalMs: 60_000, procRoot: root, littleEndian: true });
  t.true(await presence.start());
  t.teardown(() => presence.close());
  t.deepEqual(writes.map(([id, p]) => [id, p.online, p.since?.toISOString() ?? null]), [['dev_a', true, '2026-11-25T10:00:00.000Z'], ['dev_stale', false, null]]);
  writes.length = 0;
  now = new Date('2026-11-25T10:00:05Z');
  await listen([30005, 30006, 30009]);
  await presence.poll();
  t.deepEqual(writes.map(([id, p]) => [id, p.online]), [['dev_b', true]], 'dev_a is not written again');
  writes.length = 0;
  now = new Date('2026-11-25T10:01:00Z');
  await listen([30009]);
  await presence.poll();
  t.deepEqual(writes.map(([id, p]) => [id, p.online, p.lastSeen.toISOString()]), [['dev_a', false, '2026-11-25T10:01:00.000Z']]);
});

test('no /proc/net/tcp: presence is not tracked, and says so', async (t) => {
  const { store } = fakeStore({});
  const presence = new OpensshPresence({ store, pool: POOL, clock: () => new Date(), logger: createLogger('silent'), intervalMs: 1000, procRoot: '/nonexistent' });
  t.false(await presence.start());
});

test("this machine's /proc: a real listener in a block is seen", async (t) => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  const pool = { first: port - 1, last: port + 1, perDevice: 3 };
  const { store, writes } = fakeStore({ [port - 1]: 'dev_real' });
  const presence = new OpensshPresence({ store, pool, clock: () => new Date(), logger: createLogger('silent'), intervalMs: 60_000 });
  t.true(await presence.start());
  t.teardown(() => presence.close());
  t.deepEqual(writes.map(([id, p]) => [id, p.online]), [['dev_real', true]]);
});
