import test from 'ava';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  decodePrivateKey,
  formatPublicKey,
  generateKeyPair,
  isCaError,
  loadPublicKey,
  SshReader,
  SshWriter,
  type CaErrorCode,
  type KeyPair,
} from '../../ca/index.js';
import { parseSshsig, signSshsig, verifySshsig, SSHSIG_HASHES } from '../../ca/sshsig.js';
import { makeOpensshKey, sshKeygen, sshKeygenOk, withTempDir } from '../../testkit/openssh.js';

const NS = 'certunnel-enroll@example.com';
const MESSAGE = Buffer.from('enroll device 42 with nonce 0123456789abcdef\n');

function armor(blob: Buffer): string {
  const lines = blob.toString('base64').match(/.{1,70}/g) ?? [];
  return `-----BEGIN SSH SIGNATURE-----\n${lines.join('\n')}\n-----END SSH SIGNATURE-----\n`;
}

function dearmor(text: string): Buffer {
  return Buffer.from(text.split('\n').slice(1, -2).join(''), 'base64');
}

interface Fields {
  magic: Buffer;
  version: number;
  publicKey: Buffer;
  namespace: string;
  reserved: Buffer;
  hash: string;
  signature: Buffer;
}

/** PROTOCOL.sshsig section 2, field by field, so tests can rebuild a blob with one field changed. */
function splitBlob(blob: Buffer): Fields {
  const r = new SshReader(blob);
  const fields = {
    magic: r.raw(6),
    version: r.uint32(),
    publicKey: r.string(),
    namespace: r.text(),
    reserved: r.string(),
    hash: r.text(),
    signature: r.string(),
  };
  r.end();
  return fields;
}

function joinBlob(f: Fields): Buffer {
  return new SshWriter()
    .raw(f.magic)
    .uint32(f.version)
    .string(f.publicKey)
    .string(f.namespace)
    .string(f.reserved)
    .string(f.hash)
    .string(f.signature)
    .toBuffer();
}

function rebuild(sig: string, patch: (f: Fields) => void): string {
  const fields = splitBlob(dearmor(sig));
  patch(fields);
  return armor(joinBlob(fields));
}

const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * The same blob with non-zero bits in the base64 padding: Node decodes it
 * happily, so only an explicit canonical check refuses it.
 */
function nonCanonical(sig: string): string {
  let text = sig;
  for (let n = 0; !text.includes('=='); n++) text = rebuild(sig, (f) => void (f.reserved = Buffer.alloc(n)));
  const at = text.indexOf('==') - 1;
  return text.slice(0, at) + BASE64[BASE64.indexOf(text[at]!) + 1]! + text.slice(at + 1);
}

function codeOf(fn: () => unknown): CaErrorCode | undefined {
  try {
    fn();
  } catch (err) {
    return isCaError(err) ? err.code : undefined;
  }
  return undefined;
}

async function allowedSigners(dir: string, pair: KeyPair): Promise<string> {
  const path = join(dir, 'allowed_signers');
  await writeFile(path, `device@test namespaces="${NS}" ${formatPublicKey(pair.publicKey)}\n`);
  return path;
}

for (const hash of SSHSIG_HASHES) {
  test(`ok/our ${hash} signature verifies with ssh-keygen -Y verify and check-novalidate`, async (t) => {
    await withTempDir(async (dir) => {
      const pair = generateKeyPair();
      const sigPath = join(dir, 'msg.sig');
      await writeFile(sigPath, signSshsig(MESSAGE, pair, NS, hash));
      const signers = await allowedSigners(dir, pair);
      const verify = await sshKeygen(['-Y', 'verify', '-f', signers, '-I', 'device@test', '-n', NS, '-s', sigPath], { input: MESSAGE });
      t.is(verify.code, 0, verify.stderr);
      const check = await sshKeygen(['-Y', 'check-novalidate', '-n', NS, '-s', sigPath], { input: MESSAGE });
      t.is(check.code, 0, check.stderr);
      // The referee can say no: another message, another namespace.
      const altered = await sshKeygen(['-Y', 'check-novalidate', '-n', NS, '-s', sigPath], { input: 'other' });
      t.not(altered.code, 0);
      const otherNs = await sshKeygen(['-Y', 'check-novalidate', '-n', 'other', '-s', sigPath], { input: MESSAGE });
      t.not(otherNs.code, 0);
    });
  });

  test(`ok/ssh-keygen -Y sign (${hash}) verifies here, and Ed25519 makes our armor byte-identical`, async (t) => {
    await withTempDir(async (dir) => {
      const key = await makeOpensshKey(dir, 'signer');
      const msgPath = join(dir, 'msg');
      await writeFile(msgPath, MESSAGE);
      await sshKeygenOk(['-Y', 'sign', '-f', key.path, '-n', NS, '-O', `hashalg=${hash}`, msgPath]);
      const theirs = await readFile(`${msgPath}.sig`, 'utf8');
      const expectedKey = await loadPublicKey(`${key.path}.pub`);
      const verified = verifySshsig(theirs, MESSAGE, NS, expectedKey);
      t.true(verified.publicKey.equals(expectedKey));
      t.is(verified.namespace, NS);
      t.is(verified.hash, hash);
      // Ed25519 signatures are deterministic: same key, message, namespace
      // and hash must give the same bytes, armor layout included.
      const pair = decodePrivateKey(await readFile(key.path));
      t.is(signSshsig(MESSAGE, pair, NS, hash), theirs);
    });
  });
}

test('ok/sha512 is the default hash and strings sign as UTF-8', (t) => {
  const pair = generateKeyPair();
  const sig = signSshsig('héllo', pair, NS);
  t.is(parseSshsig(sig).hash, 'sha512');
  t.is(verifySshsig(sig, Buffer.from('héllo', 'utf8'), NS).hash, 'sha512');
  t.is(verifySshsig(Buffer.from(sig), 'héllo', NS).namespace, NS);
});

test('fail/wrong namespace, altered message, flipped signature bit, wrong key', (t) => {
  const pair = generateKeyPair();
  const sig = signSshsig(MESSAGE, pair, NS);
  t.notThrows(() => verifySshsig(sig, MESSAGE, NS, pair.publicKey));
  t.is(codeOf(() => verifySshsig(sig, MESSAGE, 'git')), 'SSHSIG_NAMESPACE_MISMATCH');
  t.is(codeOf(() => verifySshsig(sig, MESSAGE, '')), 'SSHSIG_NAMESPACE_MISMATCH');
  const altered = Buffer.from(MESSAGE);
  altered[3]! ^= 0x01;
  t.is(codeOf(() => verifySshsig(sig, altered, NS)), 'SSHSIG_BAD_SIGNATURE');
  for (const bit of [0, 100, 511]) {
    const flipped = rebuild(sig, (f) => {
      const s = Buffer.from(f.signature);
      s[s.length - 64 + (bit >> 3)]! ^= 1 << (bit & 7);
      f.signature = s;
    });
    t.is(codeOf(() => verifySshsig(flipped, MESSAGE, NS)), 'SSHSIG_BAD_SIGNATURE', `bit ${bit}`);
  }
  // A signature by another key over the same data: valid, but not the expected signer.
  const other = generateKeyPair();
  const byOther = signSshsig(MESSAGE, other, NS);
  t.notThrows(() => verifySshsig(byOther, MESSAGE, NS));
  t.is(codeOf(() => verifySshsig(byOther, MESSAGE, NS, pair.publicKey)), 'SSHSIG_WRONG_KEY');
  // Swapping the public key field to the expected key does not help an attacker.
  const swapped = rebuild(byOther, (f) => {
    f.publicKey = splitBlob(dearmor(sig)).publicKey;
  });
  t.is(codeOf(() => verifySshsig(swapped, MESSAGE, NS, pair.publicKey)), 'SSHSIG_BAD_SIGNATURE');
  // The namespace inside the blob is covered by the signature too.
  const renamed = rebuild(sig, (f) => {
    f.namespace = 'git';
  });
  t.is(codeOf(() => verifySshsig(renamed, MESSAGE, 'git')), 'SSHSIG_BAD_SIGNATURE');
  const rehashed = rebuild(sig, (f) => {
    f.hash = 'sha256';
  });
  t.is(codeOf(() => verifySshsig(rehashed, MESSAGE, NS)), 'SSHSIG_BAD_SIGNATURE');
});

test('ok/a non-empty reserved field is ignored, as PROTOCOL.sshsig says and ssh-keygen does', async (t) => {
  await withTempDir(async (dir) => {
    const pair = generateKeyPair();
    const sig = rebuild(signSshsig(MESSAGE, pair, NS), (f) => {
      f.reserved = Buffer.from('future-tag');
    });
    t.deepEqual(parseSshsig(sig).reserved, Buffer.from('future-tag'));
    t.notThrows(() => verifySshsig(sig, MESSAGE, NS, pair.publicKey));
    const sigPath = join(dir, 'sig');
    await writeFile(sigPath, sig);
    const check = await sshKeygen(['-Y', 'check-novalidate', '-n', NS, '-s', sigPath], { input: MESSAGE });
    t.is(check.code, 0, check.stderr);
  });
});

test('fail/garbage, truncated and non-canonical armor is SSHSIG_MALFORMED', (t) => {
  const pair = generateKeyPair();
  const sig = signSshsig(MESSAGE, pair, NS);
  const blob = dearmor(sig);
  const lines = sig.split('\n');
  const cases: Array<[string, string | Buffer]> = [
    ['fail/empty', ''],
    ['fail/garbage', 'hello world'],
    ['fail/header-only', '-----BEGIN SSH SIGNATURE-----\n'],
    ['fail/no-body', '-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n'],
    ['fail/no-footer', lines.slice(0, -2).join('\n')],
    ['fail/truncated-text', lines.slice(0, 3).join('\n') + '\n-----END SSH SIGNATURE-----\n'],
    ['fail/leading-text', `x\n${sig}`],
    ['fail/trailing-text', `${sig}junk\n`],
    ['fail/bad-base64-char', sig.replace(lines[1]!, `${lines[1]!.slice(0, -1)}*`)],
    ['fail/non-canonical-base64', nonCanonical(sig)],
    ['fail/space-in-base64', sig.replace(lines[1]!, `${lines[1]!.slice(0, 10)} ${lines[1]!.slice(10)}`)],
    ['fail/public-key-armor', `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.slice(1, -2).join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`],
    ['fail/truncated-blob', armor(blob.subarray(0, blob.length - 1))],
    ['fail/half-blob', armor(blob.subarray(0, 40))],
    ['fail/magic-only', armor(Buffer.from('SSHSIG'))],
    ['fail/trailing-bytes', armor(Buffer.concat([blob, Buffer.from([0])]))],
    ['fail/bad-magic', armor(Buffer.concat([Buffer.from('SSHSIX'), blob.subarray(6)]))],
    ['fail/short-signature', rebuild(sig, (f) => void (f.signature = new SshWriter().string('ssh-ed25519').string(Buffer.alloc(63)).toBuffer()))],
    ['fail/signature-trailing', rebuild(sig, (f) => void (f.signature = Buffer.concat([f.signature, Buffer.from([1])])))],
    ['fail/empty-namespace', rebuild(sig, (f) => void (f.namespace = ''))],
    ['fail/short-public-key', rebuild(sig, (f) => void (f.publicKey = new SshWriter().string('ssh-ed25519').string(Buffer.alloc(31)).toBuffer()))],
  ];
  for (const [name, text] of cases) {
    t.is(codeOf(() => verifySshsig(text, MESSAGE, NS)), 'SSHSIG_MALFORMED', name);
  }
  t.notThrows(() => verifySshsig(sig.replace(/\n/g, '\r\n'), MESSAGE, NS), 'ok/crlf');
  t.notThrows(() => verifySshsig(`${sig}\n\n`, MESSAGE, NS), 'ok/extra-final-newlines');
});

test('fail/unsupported versions, hashes and algorithms are SSHSIG_UNSUPPORTED', (t) => {
  const pair = generateKeyPair();
  const sig = signSshsig(MESSAGE, pair, NS);
  const cases: Array<[string, string]> = [
    ['fail/version-2', rebuild(sig, (f) => void (f.version = 2))],
    ['fail/version-0', rebuild(sig, (f) => void (f.version = 0))],
    ['fail/hash-sha1', rebuild(sig, (f) => void (f.hash = 'sha1'))],
    ['fail/hash-SHA512', rebuild(sig, (f) => void (f.hash = 'SHA512'))],
    ['fail/rsa-signature-algorithm', rebuild(sig, (f) => void (f.signature = new SshWriter().string('rsa-sha2-512').string(Buffer.alloc(64)).toBuffer()))],
    ['fail/sk-key', rebuild(sig, (f) => void (f.publicKey = new SshWriter().string('sk-ssh-ed25519@openssh.com').string(pair.publicKey).string('ssh:').toBuffer()))],
  ];
  for (const [name, text] of cases) {
    t.is(codeOf(() => verifySshsig(text, MESSAGE, NS)), 'SSHSIG_UNSUPPORTED', name);
  }
  t.is(codeOf(() => signSshsig(MESSAGE, pair, NS, 'sha1' as 'sha256')), 'SSHSIG_UNSUPPORTED');
  t.is(codeOf(() => signSshsig(MESSAGE, pair, '')), 'SSHSIG_NAMESPACE_MISMATCH');
});

test('fail/RSA and ECDSA signatures from ssh-keygen are SSHSIG_UNSUPPORTED', async (t) => {
  await withTempDir(async (dir) => {
    const msgPath = join(dir, 'msg');
    await writeFile(msgPath, MESSAGE);
    for (const type of ['rsa', 'ecdsa'] as const) {
      const key = await makeOpensshKey(dir, type, type);
      await sshKeygenOk(['-Y', 'sign', '-f', key.path, '-n', NS, msgPath]);
      const sig = await readFile(`${msgPath}.sig`, 'utf8');
      t.is(codeOf(() => verifySshsig(sig, MESSAGE, NS)), 'SSHSIG_UNSUPPORTED', type);
      // ssh-keygen itself accepts it: the refusal is ours, by policy.
      t.is((await sshKeygen(['-Y', 'check-novalidate', '-n', NS, '-s', `${msgPath}.sig`], { input: MESSAGE })).code, 0);
      await rm(`${msgPath}.sig`); // ssh-keygen would ask before overwriting it
    }
  });
});

test('ok/verification is fast (native Ed25519)', (t) => {
  const pair = generateKeyPair();
  const sig = signSshsig(MESSAGE, pair, NS);
  const start = process.hrtime.bigint();
  for (let i = 0; i < 500; i++) verifySshsig(sig, MESSAGE, NS, pair.publicKey);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  // Native verification takes well under 0.1 ms; a pure-JS one would take tens of ms each.
  t.true(ms < 2000, `${ms} ms for 500 verifications`);
});
