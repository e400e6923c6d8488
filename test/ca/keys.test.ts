import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  decodePrivateKey,
  fingerprint,
  formatPublicKey,
  generateKeyPair,
  isCaError,
  loadKeyPair,
  parsePublicKey,
  saveKeyPair,
} from '../../ca/index.js';

const run = promisify(execFile);

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-keys-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('ok/saved key is 0600 and ssh-keygen derives the same public key', async (t) => {
  await withDir(async (dir) => {
    const pair = generateKeyPair();
    const path = join(dir, 'id');
    await saveKeyPair(path, pair, { comment: 'test' });
    t.is((await stat(path)).mode & 0o777, 0o600);
    const { stdout } = await run('ssh-keygen', ['-y', '-f', path]);
    t.is(stdout.trim().split(' ').slice(0, 2).join(' '), formatPublicKey(pair.publicKey));
    const { stdout: fp } = await run('ssh-keygen', ['-l', '-f', `${path}.pub`]);
    t.true(fp.includes(fingerprint(pair.publicKey)));
  });
});

test('ok/passphrase-protected key loads only with the right passphrase', async (t) => {
  await withDir(async (dir) => {
    const pair = generateKeyPair();
    const path = join(dir, 'ca');
    await saveKeyPair(path, pair, { passphrase: 'correct horse' });
    const { stdout } = await run('ssh-keygen', ['-y', '-P', 'correct horse', '-f', path]);
    t.is(stdout.trim().split(' ').slice(0, 2).join(' '), formatPublicKey(pair.publicKey));
    const loaded = await loadKeyPair(path, { passphrase: 'correct horse' });
    t.true(loaded.publicKey.equals(pair.publicKey));
    const noPass = await t.throwsAsync(loadKeyPair(path));
    t.true(isCaError(noPass, 'KEY_ENCRYPTED'));
    const wrong = await t.throwsAsync(loadKeyPair(path, { passphrase: 'wrong' }));
    t.true(isCaError(wrong, 'KEY_BAD_PASSPHRASE'));
  });
});

test('ok/key made by ssh-keygen loads', async (t) => {
  await withDir(async (dir) => {
    const path = join(dir, 'k');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path]);
    const pair = decodePrivateKey(await readFile(path));
    t.true(pair.publicKey.equals(parsePublicKey(await readFile(`${path}.pub`, 'utf8'))));
  });
});

test('fail/RSA, ECDSA and DSA keys are refused with KEY_UNSUPPORTED', async (t) => {
  await withDir(async (dir) => {
    for (const [type, bits] of [['rsa', '2048'], ['ecdsa', '256']] as const) {
      const path = join(dir, type);
      await run('ssh-keygen', ['-q', '-t', type, '-b', bits, '-N', '', '-f', path]);
      const pubErr = t.throws(() => parsePublicKey(`ssh-${type} AAAA`));
      t.truthy(pubErr);
      const line = await readFile(`${path}.pub`, 'utf8');
      t.true(isCaError(t.throws(() => parsePublicKey(line)), 'KEY_UNSUPPORTED'), type);
      t.true(isCaError(t.throws(() => decodePrivateKey(Buffer.from('x'))), 'KEY_INVALID'));
      const privErr = t.throws(() => decodePrivateKey(line));
      t.truthy(privErr);
    }
    await writeFile(join(dir, 'dsa.pub'), 'ssh-dss AAAAB3NzaC1kc3MAAACBAP== x');
    t.true(isCaError(t.throws(() => parsePublicKey('ssh-dss AAAAB3NzaC1kc3MAAACBAP== x')), 'KEY_UNSUPPORTED'));
  });
});

test('fail/garbage public keys are KEY_INVALID', (t) => {
  for (const line of ['', 'hello', 'ssh-ed25519', 'ssh-ed25519 !!!!', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==', "ssh-ed25519 ' OR 1=1 --"]) {
    t.true(isCaError(t.throws(() => parsePublicKey(line)), 'KEY_INVALID'), line);
  }
});
