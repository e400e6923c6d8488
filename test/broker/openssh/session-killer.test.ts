/**
 * The pure half of the session killer: /proc/net/tcp{,6} parsing, with
 * fixture text captured from Linux 6.x on x86-64 (little-endian). The /proc
 * walking and the signalling are tested against real processes and a real
 * sshd in test/broker/openssh-mode.test.ts.
 */
import test from 'ava';
import {
  formatIpv6,
  isLoopbackOrAny,
  listenerInodes,
  parseProcNetTcp,
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
