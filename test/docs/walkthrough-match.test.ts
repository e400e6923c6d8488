/**
 * testkit/walkthrough.ts, the reader of docs/walkthrough.md: what counts as
 * the recorded output (ids, times and numbers by shape, every word as
 * written), and how the page is cut into commands.
 */
import test from 'ava';
import { linePattern, matchOutput, parseWalkthrough, readInOrder, substitutePorts } from '../../testkit/walkthrough.js';

const LINE_CASES: ReadonlyArray<readonly [string, string, string, boolean]> = [
  ['ok/ids-times-numbers-by-shape', 'revoked dev_qvdcjvvwcs2j2bct (kiosk-0001): 3 certificate(s) revoked at 2026-11-25T09:07:33.738Z',
    'revoked dev_zqmczy7o4yqeyb7i (kiosk-0001): 12 certificate(s) revoked at 2026-12-05T05:23:35.901Z', true],
  ['ok/columns-widen', 'dev_qvdcjvvwcs2j2bct  kiosk-0001  active  20000-20001  127.0.0.1', 'dev_qvdcjvvwcs2j2bct  kiosk-0001  active   32386-32387    127.0.0.1', true],
  ['ok/pin-and-fingerprint', '  user CA:  SHA256:6fsRPV23Rs72jMtWAR8maQlS2mcjfPsNwYO5l7jLIVc pin sha256//qv8O2G/ht+jrV5BKYnD1cDKR7miz1YkASK38EUyLFZk=',
    '  user CA:  SHA256:Sn30XKaeUhYwZbjRF9FScn/DPvnm+MlwBlFMcdlnSmI pin sha256//CAqg95qN8adwOgFu+gqv6BoR89NHGuXC5+1eUzz/ORk=', true],
  ['ok/api-key-shortened', '  ctk_key_odgp…', '  ctk_key_lxiced7pukqcqt7n.Y9Jc64AaDuiypOtjAIseydLACF18Iuor', true],
  ['ok/ellipsis-inside-a-line', 'Linux 6.…', 'Linux 6.1.0-27-amd64', true],
  ['ok/durations', 'certificate:  serial 2, valid until 2026-11-25T10:07:24.000Z (in 59m55s)', 'certificate:  serial 129, valid until 2026-12-05T06:35:59.000Z (in 1h)', true],
  ['ok/month-names', '-rw-r--r-- 1 root root 99 Nov 25 09:07 user_ca.pub', '-rw-r--r-- 1 root root 99 Dec  5 05:31 user_ca.pub', true],
  ['ok/host-key-file', '-rw------- 1 root root  411 Dec  5 05:33 host_key-0f1e2d3c4b5a6978-8796a5b4c3d2e1f0-cert.pub',
    '-rw------- 1 root root  411 Dec  6 02:50 host_key-a1b2c3d4e5f60718-293a4b5c6d7e8f90-cert.pub', true],
  ['fail/host-key-file-renamed', '-rw------- 1 root root  411 Dec  5 05:33 host_key-0f1e2d3c4b5a6978-8796a5b4c3d2e1f0-cert.pub',
    '-rw------- 1 root root  411 Dec  6 02:50 host_key-a1b2c3d4e5f60718-cert.pub', false],
  ['fail/renamed-message', '{"level":"info","event":"connected","port":2222,"msg":"tunnel up"}', '{"level":"info","event":"connected","port":30756,"msg":"tunnel is up"}', false],
  ['fail/renamed-field', '{"level":"info","event":"connected","port":2222,"msg":"tunnel up"}', '{"level":"info","event":"connected","sshPort":2222,"msg":"tunnel up"}', false],
  ['fail/other-word', 'OK    token-status  token tok_pihx3ly6tlrdrexu is active', 'OK    token-status  token tok_pihx3ly6tlrdrexu is used', false],
  ['fail/missing-word', 'enrolled:     yes', 'enrolled:', false],
  ['fail/a-number-inside-a-word-is-literal', 'key type ed25519', 'key type ed448', false],
  ['fail/an-id-of-another-kind', 'device dev_qvdcjvvwcs2j2bct', 'device tok_qvdcjvvwcs2j2bct', false],
];

for (const [name, recorded, actual, ok] of LINE_CASES) {
  test(`linePattern ${name}`, (t) => {
    t.is(linePattern(recorded).test(actual), ok);
  });
}

test('matchOutput: line for line; a line of only … stands for any number of lines', (t) => {
  t.is(matchOutput(['a 1', '…', 'z 2'], ['a 5', 'b', 'c', 'z 9', '']), undefined);
  t.is(matchOutput(['a 1', '…', 'z 2'], ['a 5', 'z 9']), undefined);
  t.is(matchOutput(['a 1', 'z 2'], ['a 5', 'b', 'z 9']), 'z 2', 'an unrecorded line in between');
  t.is(matchOutput(['a 1'], ['a 5', 'b']), '(the output has more lines than recorded)');
  t.is(matchOutput(['a 1', 'b'], ['a 5']), 'b', 'a recorded line missing');
  t.is(matchOutput([], ['']), undefined, 'no output recorded, none printed');
  t.not(matchOutput([], ['something']), undefined, 'no output recorded, something printed');
});

test('readInOrder: each line in one of the streams, in order within each; the cursors move only on a full match', (t) => {
  const out = { lines: ['{"ready":true}'], read: 0 };
  const err = { lines: ['started 1', 'state', 'connected 2'], read: 0 };
  t.true(readInOrder(['started 9', '{"ready":true}', '…', 'connected 3'], [out, err]));
  t.deepEqual([out.read, err.read], [1, 3]);
  const again = { lines: ['connected 2', 'lost'], read: 0 };
  t.false(readInOrder(['lost', 'connected 1'], [again]), 'out of order');
  t.is(again.read, 0);
});

test('parseWalkthrough: commands, continuation lines, background commands, later output', (t) => {
  const page = [
    'text $ not a command',
    '```',
    '$ certunnel broker --data ./data &',
    '{"ready":true}',
    '$ curl -sS \\',
    '    https://x/',
    'ok',
    '',
    '```',
    '',
    '```',
    'later line',
    '$ true',
    '```',
  ].join('\n');
  t.deepEqual(parseWalkthrough(page), [
    { kind: 'command', command: 'certunnel broker --data ./data', background: true, expected: ['{"ready":true}'], line: 3 },
    { kind: 'command', command: 'curl -sS \\\n    https://x/', background: false, expected: ['ok'], line: 5 },
    { kind: 'later-output', expected: ['later line'], line: 12 },
    { kind: 'command', command: 'true', background: false, expected: [], line: 13 },
  ]);
});

test('substitutePorts: whole numbers only', (t) => {
  const ports = new Map([[8443, 31000], [2022, 31001]]);
  t.is(substitutePorts('--resolve a.example:8443:127.0.0.1 ssh=127.0.0.1:2022 RPI-18443 v2022', ports), '--resolve a.example:31000:127.0.0.1 ssh=127.0.0.1:31001 RPI-18443 v2022');
});
