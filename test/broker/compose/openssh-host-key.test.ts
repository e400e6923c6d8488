/**
 * compose/openssh-host-key.ts without a real sshd (the real one is in
 * test/broker/openssh/host-key-reload.test.ts, root only): the files a
 * change writes, and the /healthz problem from what a fake ssh-keyscan
 * says sshd serves — SSHD_RELOAD_NEEDED without a reload setting until
 * sshd serves the key, SSHD_RELOAD_FAILED when the reload fails, retried.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../../ca/index.js';
import { SshdHostKeyFollower } from '../../../broker/compose/openssh-host-key.js';
import type { TrustSnapshot } from '../../../broker/core/trust-roots.js';
import type { ServedHostKeys } from '../../../broker/openssh/sshd-reload.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { hostCertificateLine, restingSnapshot } from '../../../testkit/trust.js';
import { Writable } from 'node:stream';

const silent = createLogger('fatal', new Writable({ write: (_c, _e, cb) => cb() }));

function snapshotOf(hostCa: KeyPair, hostKey: KeyPair): TrustSnapshot {
  const userCa = generateKeyPair();
  return restingSnapshot({ userCa, hostCa: hostCa.publicKey, hostKey, hostCertificate: hostCertificateLine(hostCa, hostKey) });
}

function servedBy(snapshot: TrustSnapshot): ServedHostKeys {
  return { keys: [formatPublicKey(snapshot.hostKey.publicKey)], certificates: [snapshot.hostCertificate.split(' ').slice(0, 2).join(' ')] };
}

test('ok/no reload setting: new files at once, SSHD_RELOAD_NEEDED until sshd serves the key, then the old files go', async (t) => {
  await withTempDir(async (dir) => {
    const hostCa = generateKeyPair();
    const first = snapshotOf(hostCa, generateKeyPair());
    const next = { ...first, hostKey: generateKeyPair() };
    const second: TrustSnapshot = { ...next, hostCertificate: hostCertificateLine(hostCa, next.hostKey) };
    let sshdServes: ServedHostKeys | null = servedBy(first);
    const written: string[] = [];
    const follower = new SshdHostKeyFollower({
      outDir: dir, reload: null, scan: async () => sshdServes, logger: silent, retryMs: 20,
      writeFiles: async (_snapshot, files) => void written.push(files.hostKeyPath),
    });
    try {
      await follower.start(first);
      t.is(follower.problem(), null, 'sshd serves the presented key at start');
      follower.change(second, first);
      await waitFor(() => follower.problem() === 'SSHD_RELOAD_NEEDED', 'SSHD_RELOAD_NEEDED');
      t.is(written.length, 2);
      t.not(written[0], written[1], 'the new key gets a file of its own');
      t.is(((await readFile(written[1]!, 'utf8')).match(/BEGIN OPENSSH PRIVATE KEY/g) ?? []).length, 1);
      t.is((await readdir(dir)).length, 2, 'the old key file stays while sshd may still read it');
      sshdServes = servedBy(second); // the operator reloaded sshd
      await waitFor(() => follower.problem() === null, 'the problem to clear');
      await waitFor(async () => (await readdir(dir)).length === 1, 'the old key file to be removed');
      t.deepEqual(await readdir(dir), [written[1]!.split('/').at(-1)!]);
    } finally {
      follower.close();
    }
  });
});

test('fail/sshd -t refuses the configuration: no SIGHUP, SSHD_RELOAD_FAILED, retried; clear once sshd serves the key', async (t) => {
  await withTempDir(async (dir) => {
    const hostCa = generateKeyPair();
    const first = snapshotOf(hostCa, generateKeyPair());
    const key = generateKeyPair();
    const second: TrustSnapshot = { ...first, hostKey: key, hostCertificate: hostCertificateLine(hostCa, key) };
    let sshdServes: ServedHostKeys | null = servedBy(first);
    let scans = 0;
    // Stands in for sshd's listener: a SIGHUP would end it.
    const listener = spawn('sleep', ['60'], { stdio: 'ignore' });
    const pidFile = join(dir, 'sshd.pid');
    await writeFile(pidFile, `${listener.pid}\n`);
    const follower = new SshdHostKeyFollower({
      outDir: join(dir, 'openssh'), reload: { pidFile, sshdPath: '/bin/false', sshdConfig: '/etc/ssh/sshd_config' }, logger: silent, retryMs: 20, settleMs: 50,
      scan: async () => {
        scans += 1;
        return sshdServes;
      },
      writeFiles: async () => undefined,
    });
    try {
      await follower.start(first);
      follower.change(first, first);
      t.is(follower.problem(), null, 'the same key and certificate: nothing to do');
      follower.change(second, first);
      await waitFor(() => follower.problem() === 'SSHD_RELOAD_FAILED', 'SSHD_RELOAD_FAILED');
      const before = scans;
      await waitFor(() => scans > before + 2, 'retries');
      t.is(listener.exitCode, null);
      t.is(listener.signalCode, null, 'never signalled: sshd -t failed');
      sshdServes = servedBy(second); // reloaded by the operator
      await waitFor(() => follower.problem() === null, 'the problem to clear');
    } finally {
      follower.close();
      listener.kill('SIGKILL');
    }
  });
});
