import test from 'ava';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isCaError, loadPublicKey, SshReader, type PublicKey } from '../../ca/index.js';
import { encodeKrl, planSerials, writeKrl, type KrlInput } from '../../ca/krl.js';
import { certifyWithSshKeygen, makeOpensshKey, sshKeygen, sshKeygenOk, withTempDir } from '../../testkit/openssh.js';

const U64_MAX = (1n << 64n) - 1n;
const NOW = new Date('2025-06-01T12:00:00Z');

/** ssh-keygen -Q: exit 1 and "REVOKED" for a revoked key, exit 0 and "ok" otherwise. */
async function isRevoked(krlPath: string, keyPath: string): Promise<boolean> {
  const { code, stdout, stderr } = await sshKeygen(['-Q', '-f', krlPath, keyPath]);
  if (code === 1 && /: REVOKED$/m.test(stdout)) return true;
  if (code === 0 && /: ok$/m.test(stdout)) return false;
  throw new Error(`ssh-keygen -Q gave exit ${code}: ${stdout}${stderr}`);
}

/** ssh-keygen's own dump of a KRL, without the header lines that legitimately differ. */
async function dumpKrl(krlPath: string): Promise<string> {
  const { stdout } = await sshKeygenOk(['-Q', '-l', '-f', krlPath]);
  return stdout
    .split('\n')
    .filter((line) => !/^# (KRL version|Generated at|Comment)/.test(line) && line.trim() !== '')
    .join('\n');
}

interface Issued {
  readonly name: string;
  readonly cert: string;
  readonly revoked: boolean;
}

/** Issues one certificate per row, each on its own key. */
async function issue(
  dir: string,
  caPath: string,
  rows: ReadonlyArray<readonly [string, string, bigint, boolean]>,
  prefix = 'user',
): Promise<Issued[]> {
  return Promise.all(
    rows.map(async ([name, keyId, serial, revoked], i) => {
      const { path } = await makeOpensshKey(dir, `${prefix}${i}`);
      const cert = await certifyWithSshKeygen(caPath, `${path}.pub`, { keyId, serial, principals: ['p'] });
      return { name, cert, revoked };
    }),
  );
}

const REVOKED_SERIALS = [100n, 101n, 102n, 103n, 104n, 7n, 200n, 201n, 10n ** 15n, 1n << 63n, U64_MAX - 2n, U64_MAX - 1n, U64_MAX, 7n];

test('ok/serials and key ids revoke exactly the listed certificates of that CA', async (t) => {
  await withTempDir(async (dir) => {
    const ca = await makeOpensshKey(dir, 'ca');
    const otherCa = await makeOpensshKey(dir, 'other-ca');
    const caKey = await loadPublicKey(`${ca.path}.pub`);
    const rows = [
      ['ok/below-range', 'device:a', 99n, false],
      ['fail/range-start', 'device:a', 100n, true],
      ['fail/range-middle', 'device:a', 102n, true],
      ['fail/range-end', 'device:a', 104n, true],
      ['ok/after-range', 'device:a', 105n, false],
      ['fail/singleton', 'device:a', 7n, true],
      ['ok/beside-singleton', 'device:a', 8n, false],
      ['fail/pair-first', 'device:a', 200n, true],
      ['fail/pair-second', 'device:a', 201n, true],
      ['ok/after-pair', 'device:a', 202n, false],
      ['fail/after-big-gap', 'device:a', 10n ** 15n, true],
      ['ok/beside-big-gap', 'device:a', 10n ** 15n + 1n, false],
      ['fail/2^63', 'device:a', 1n << 63n, true],
      ['ok/2^63-1', 'device:a', (1n << 63n) - 1n, false],
      ['fail/u64-max', 'device:a', U64_MAX, true],
      ['fail/u64-max-2', 'device:a', U64_MAX - 2n, true],
      ['ok/u64-max-3', 'device:a', U64_MAX - 3n, false],
      ['fail/key-id', 'device:revoked', 5000n, true],
      ['fail/second-key-id', 'operator:eve', 5001n, true],
      ['ok/similar-key-id', 'device:revoked2', 5002n, false],
    ] as const;
    const mine = await issue(dir, ca.path, rows);
    const foreign = await issue(dir, otherCa.path, [
      ['ok/other-ca-revoked-serial', 'device:a', 7n, false],
      ['ok/other-ca-revoked-key-id', 'device:revoked', 9n, false],
    ], 'foreign');
    const krl = join(dir, 'krl');
    await writeKrl(krl, { caKey, serials: REVOKED_SERIALS, keyIds: ['operator:eve', 'device:revoked'], version: 3n, generatedAt: NOW });
    const results = await Promise.all([...mine, ...foreign].map(async (c) => ({ ...c, actual: await isRevoked(krl, c.cert) })));
    for (const c of results) t.is(c.actual, c.revoked, c.name);
  });
});

test('ok/same revocations as a KRL made by ssh-keygen -k', async (t) => {
  await withTempDir(async (dir) => {
    const ca = await makeOpensshKey(dir, 'ca');
    const caKey = await loadPublicKey(`${ca.path}.pub`);
    const victim = await makeOpensshKey(dir, 'victim');
    const victimKey = await loadPublicKey(`${victim.path}.pub`);
    const spec = join(dir, 'spec');
    await writeFile(
      spec,
      [
        'serial: 7',
        'serial: 100-104',
        'serial: 200',
        'serial: 201',
        `serial: ${10n ** 15n}`,
        `serial: ${1n << 63n}`,
        `serial: ${U64_MAX - 2n}-${U64_MAX}`,
        'id: device:revoked',
        'id: operator:eve',
        `sha256: ${victim.publicKeyLine}`,
        '',
      ].join('\n'),
    );
    const reference = join(dir, 'reference.krl');
    await sshKeygenOk(['-k', '-f', reference, '-s', `${ca.path}.pub`, spec]);
    const ours = join(dir, 'ours.krl');
    await writeKrl(ours, {
      caKey,
      serials: REVOKED_SERIALS,
      keyIds: ['device:revoked', 'operator:eve'],
      revokedKeys: [victimKey],
      version: 1n,
      generatedAt: NOW,
      comment: 'cross-check',
    });
    t.is(await dumpKrl(ours), await dumpKrl(reference));
  });
});

test('ok/empty KRL parses and revokes nothing', async (t) => {
  await withTempDir(async (dir) => {
    const ca = await makeOpensshKey(dir, 'ca');
    const caKey = await loadPublicKey(`${ca.path}.pub`);
    const user = await makeOpensshKey(dir, 'user');
    const cert = await certifyWithSshKeygen(ca.path, `${user.path}.pub`, { keyId: 'device:x', serial: 1n, principals: ['p'] });
    const krl = join(dir, 'krl');
    await writeKrl(krl, { caKey, version: 42n, generatedAt: NOW, serials: [], keyIds: [], revokedKeys: [] });
    t.false(await isRevoked(krl, cert));
    t.false(await isRevoked(krl, `${user.path}.pub`));
    t.false(await isRevoked(krl, `${ca.path}.pub`));
    const { stdout } = await sshKeygenOk(['-Q', '-l', '-f', krl]);
    t.regex(stdout, /^# KRL version 42$/m);
  });
});

test('ok/revoked plain keys: bare, as a certificate subject, and as the CA', async (t) => {
  await withTempDir(async (dir) => {
    const ca = await makeOpensshKey(dir, 'ca');
    const caKey = await loadPublicKey(`${ca.path}.pub`);
    const bad = await makeOpensshKey(dir, 'bad');
    const good = await makeOpensshKey(dir, 'good');
    const badKey = await loadPublicKey(`${bad.path}.pub`);
    const badCert = await certifyWithSshKeygen(ca.path, `${bad.path}.pub`, { keyId: 'device:bad', serial: 11n, principals: ['p'] });
    const goodCert = await certifyWithSshKeygen(ca.path, `${good.path}.pub`, { keyId: 'device:good', serial: 12n, principals: ['p'] });
    const krl = join(dir, 'krl');
    await writeKrl(krl, { caKey, revokedKeys: [badKey, badKey], version: 1n, generatedAt: NOW });
    t.true(await isRevoked(krl, `${bad.path}.pub`), 'fail/bare-key');
    t.true(await isRevoked(krl, badCert), 'fail/cert-of-revoked-key');
    t.false(await isRevoked(krl, `${good.path}.pub`), 'ok/other-key');
    t.false(await isRevoked(krl, goodCert), 'ok/other-cert');
    // Revoking the CA key itself takes every certificate it signed with it.
    await writeKrl(krl, { caKey, revokedKeys: [caKey], version: 2n, generatedAt: NOW });
    t.true(await isRevoked(krl, goodCert), 'fail/cert-of-revoked-ca');
  });
});

test('ok/many revoked keys: all revoked, hashes in the order PROTOCOL.krl section 4 requires', async (t) => {
  await withTempDir(async (dir) => {
    const ca = await makeOpensshKey(dir, 'ca');
    const caKey = await loadPublicKey(`${ca.path}.pub`);
    const keys = await Promise.all(Array.from({ length: 6 }, (_, i) => makeOpensshKey(dir, `k${i}`)));
    const raws: PublicKey[] = await Promise.all(keys.map((k) => loadPublicKey(`${k.path}.pub`)));
    const input: KrlInput = { caKey, revokedKeys: [...raws.slice(0, 5), raws[0]!], version: 1n, generatedAt: NOW };
    const krl = join(dir, 'krl');
    await writeKrl(krl, input);
    const results = await Promise.all(keys.map((k) => isRevoked(krl, `${k.path}.pub`)));
    t.deepEqual(results, [true, true, true, true, true, false]);
    // ssh-keygen 9.2 does not check the order, so read the section ourselves.
    const reader = new SshReader(encodeKrl(input));
    reader.raw(8 + 4 + 8 + 8 + 8);
    reader.string(); // reserved
    reader.string(); // comment
    t.is(reader.byte(), 5); // KRL_SECTION_FINGERPRINT_SHA256
    const section = new SshReader(reader.string());
    reader.end();
    const hashes: Buffer[] = [];
    while (section.remaining > 0) hashes.push(section.string());
    t.is(hashes.length, 5);
    for (let i = 1; i < hashes.length; i++) t.true(Buffer.compare(hashes[i - 1]!, hashes[i]!) < 0);
  });
});

test('ok/serial plan: sorted, deduped, runs of three or more become ranges', (t) => {
  t.deepEqual(planSerials([9n, 1n, 2n, 3n, 5n, 3n, 7n, 8n, U64_MAX]), {
    singles: [5n, U64_MAX],
    ranges: [[1n, 3n], [7n, 9n]],
  });
  t.deepEqual(planSerials([U64_MAX, U64_MAX - 1n]), { singles: [U64_MAX - 1n, U64_MAX], ranges: [] });
  t.deepEqual(planSerials([]), { singles: [], ranges: [] });
});

test('ok/KRL header fields are encoded as PROTOCOL.krl section 1 says', (t) => {
  const caKey = Buffer.alloc(32, 1);
  const krl = encodeKrl({ caKey, version: 0x0102n, generatedAt: new Date(1_700_000_000_999), comment: 'hi' });
  t.is(krl.subarray(0, 8).toString('latin1'), 'SSHKRL\n\0');
  t.is(krl.readUInt32BE(8), 1);
  t.is(krl.readBigUInt64BE(12), 0x0102n);
  t.is(krl.readBigUInt64BE(20), 1_700_000_000n);
  t.is(krl.readBigUInt64BE(28), 0n);
  t.is(krl.length, 36 + 4 + 4 + 2); // empty reserved, "hi", no sections
});

const invalidInputs: Array<[string, Partial<KrlInput>]> = [
  ['fail/serial-zero', { serials: [5n, 0n] }],
  ['fail/serial-negative', { serials: [-1n] }],
  ['fail/serial-over-u64', { serials: [U64_MAX + 1n] }],
  ['fail/serial-not-bigint', { serials: [5 as unknown as bigint] }],
  ['fail/empty-key-id', { keyIds: [''] }],
  ['fail/nul-in-key-id', { keyIds: ['a\0b'] }],
  ['fail/nul-in-comment', { comment: 'x\0' }],
  ['fail/short-ca-key', { caKey: Buffer.alloc(31) }],
  ['fail/short-revoked-key', { revokedKeys: [Buffer.alloc(33)] }],
  ['fail/version-negative', { version: -1n }],
  ['fail/version-over-u64', { version: U64_MAX + 1n }],
  ['fail/invalid-date', { generatedAt: new Date(Number.NaN) }],
];

for (const [name, patch] of invalidInputs) {
  test(`${name} is refused with KRL_INVALID`, (t) => {
    const input: KrlInput = { caKey: Buffer.alloc(32, 7), version: 1n, generatedAt: NOW, ...patch };
    t.true(isCaError(t.throws(() => encodeKrl(input)), 'KRL_INVALID'));
  });
}

test('ok/writeKrl replaces the file atomically with mode 0644 and leaves no temp files', async (t) => {
  await withTempDir(async (dir) => {
    const caKey = Buffer.alloc(32, 9);
    const path = join(dir, 'revoked.krl');
    const first: KrlInput = { caKey, serials: [1n], version: 1n, generatedAt: NOW };
    const second: KrlInput = { caKey, serials: [1n, 2n, 3n], keyIds: ['device:z'], version: 2n, generatedAt: NOW };
    await writeKrl(path, first);
    t.deepEqual(await readFile(path), encodeKrl(first));
    await writeKrl(path, second);
    t.deepEqual(await readFile(path), encodeKrl(second));
    t.is((await stat(path)).mode & 0o777, 0o644);
    t.deepEqual(await readdir(dir), ['revoked.krl']);
    // Invalid input must fail before the existing KRL is touched.
    const err = await t.throwsAsync(writeKrl(path, { ...second, serials: [0n], version: 3n }));
    t.true(isCaError(err, 'KRL_INVALID'));
    t.deepEqual(await readFile(path), encodeKrl(second));
    t.deepEqual(await readdir(dir), ['revoked.krl']);
  });
});

test('ok/moreCaKeys: the same serials and key ids revoke certificates of every CA named (a rotation), and of no other; each CA once', async (t) => {
  await withTempDir(async (dir) => {
    const current = await makeOpensshKey(dir, 'current-ca');
    const next = await makeOpensshKey(dir, 'next-ca');
    const other = await makeOpensshKey(dir, 'other-ca');
    const [currentKey, nextKey] = await Promise.all([loadPublicKey(`${current.path}.pub`), loadPublicKey(`${next.path}.pub`)]);
    const ofCurrent = await issue(dir, current.path, [['fail/current-serial', 'device:a', 7n, true], ['fail/current-key-id', 'device:revoked', 9n, true], ['ok/current', 'device:b', 8n, false]], 'cur');
    const ofNext = await issue(dir, next.path, [['fail/next-serial', 'device:a', 7n, true], ['fail/next-key-id', 'device:revoked', 10n, true], ['ok/next', 'device:b', 11n, false]], 'next');
    const ofOther = await issue(dir, other.path, [['ok/other-ca-serial', 'device:a', 7n, false], ['ok/other-ca-key-id', 'device:revoked', 12n, false]], 'other');
    const krl = join(dir, 'krl');
    await writeKrl(krl, { caKey: currentKey, moreCaKeys: [nextKey, currentKey], serials: [7n], keyIds: ['device:revoked'], version: 1n, generatedAt: NOW });
    for (const c of [...ofCurrent, ...ofNext, ...ofOther]) t.is(await isRevoked(krl, c.cert), c.revoked, c.name);
    const dump = await dumpKrl(krl);
    t.is(dump.split('\n').filter((l) => l.startsWith('# CA key')).length, 2, dump);
  });
});
