/**
 * broker/compose/rotation-follower.ts on a real data directory and SQLite
 * store, driven through core/rotation.ts as the routes drive it: a CA
 * encrypted with a passphrase stays encrypted after a commit; listeners
 * hear each change once; a commit whose files were written only in part
 * (a crash) is completed at the next start; a seal altered in the store
 * leaves the trust as it was.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import test from 'ava';
import { fingerprint, isCaError, loadKeyPair, parseCertificateLine } from '../../../ca/index.js';
import { dataPaths, initDataDir } from '../../../broker/compose/data-dir.js';
import { loadConfig } from '../../../broker/compose/load-config.js';
import { startRotationFollower, type RotationFollower } from '../../../broker/compose/rotation-follower.js';
import { commitRotation, rollbackRotation, startRotation, type RotationDeps } from '../../../broker/core/rotation.js';
import type { TrustSnapshot } from '../../../broker/core/trust-roots.js';
import { openStore, type Store } from '../../../broker/store/index.js';
import { createLogger } from '../../../broker/telemetry/logger.js';

const NODE = 'node_aaaaaaaaaaaaaaaa';
const ADMIN = { id: 'apikey:test', role: 'admin' as const, remoteAddr: null };

interface Rig {
  readonly dir: string;
  readonly store: Store;
  readonly logs: string[];
  follow(): Promise<RotationFollower>;
  deps(f: RotationFollower): RotationDeps;
}

async function withRig(fn: (r: Rig) => Promise<void>, passphrase?: string): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-follower-'));
  const followers: RotationFollower[] = [];
  const logs: string[] = [];
  try {
    await initDataDir({ dir, config: { api: { listen: '127.0.0.1:0' }, ssh: { listen: '127.0.0.1:0' } }, ...(passphrase ? { passphrase } : {}) });
    const config = await loadConfig({ dataDir: dir });
    const store = await openStore({ filename: dataPaths(dir).database });
    const logger = createLogger('info', new Writable({ write: (c, _e, cb) => void (logs.push(String(c)), cb()) }));
    const clock = () => new Date();
    await store.registerNode({ id: NODE, name: 'n', sshEndpoint: '127.0.0.1:22', apiUrl: null, internalAddress: null, relayKey: null, version: 't', startedAt: clock() });
    try {
      await fn({
        dir, store, logs,
        follow: async () => {
          const f = await startRotationFollower({ store, config, logger, clock, paths: dataPaths(dir), nodeId: NODE, pollMs: 3_600_000, ...(passphrase ? { passphrase } : {}) });
          followers.push(f);
          return f;
        },
        deps: (f) => ({ store, config, clock, trustRoots: f, rotation: f }),
      });
    } finally {
      for (const f of followers) await f.close();
      await store.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('ok/a user CA encrypted with a passphrase is written encrypted with it at commit; listeners hear each change once', async (t) => {
  await withRig(async (r) => {
    const f = await r.follow();
    const seen: Array<TrustSnapshot['rotation']> = [];
    f.onChange((s) => seen.push(s.rotation));
    const started = await startRotation(r.deps(f), 'user-ca', ADMIN);
    await f.refresh();
    await commitRotation(r.deps(f), {}, ADMIN);
    await f.refresh();
    t.deepEqual(seen, [{ id: started.id, root: 'user-ca', phase: 'learn' }, null]);
    const paths = dataPaths(r.dir);
    const err = await t.throwsAsync(loadKeyPair(paths.userCa));
    t.true(isCaError(err) && err.code === 'KEY_ENCRYPTED', 'still encrypted');
    t.is(fingerprint((await loadKeyPair(paths.userCa, { passphrase: 'correct horse' })).publicKey), started.nextFingerprint);
    t.is(fingerprint((await loadKeyPair(`${paths.userCa}.retired-${started.id}`, { passphrase: 'correct horse' })).publicKey), started.fromFingerprint);
  }, 'correct horse');
});

test('ok/a host-key commit cut short after the certificate was written is completed at the next start', async (t) => {
  await withRig(async (r) => {
    const paths = dataPaths(r.dir);
    const f = await r.follow();
    const oldKey = await readFile(paths.hostKey);
    const started = await startRotation(r.deps(f), 'host-key', ADMIN);
    await commitRotation(r.deps(f), {}, ADMIN);
    await f.close();
    // As if the node had crashed after writing the new certificate but before the key: the old key is back.
    await writeFile(paths.hostKey, oldKey, { mode: 0o600 });
    const again = await r.follow();
    t.is(fingerprint(again.current().hostKey.publicKey), started.nextFingerprint);
    t.is(fingerprint((await loadKeyPair(paths.hostKey)).publicKey), started.nextFingerprint);
    t.is(fingerprint(parseCertificateLine(await readFile(paths.hostCert, 'utf8')).publicKey), started.nextFingerprint, 'key and certificate agree');
  });
});

test('fail/a seal that does not open (altered in the store): the node keeps its trust, does not ack, logs without the blob', async (t) => {
  await withRig(async (r) => {
    const f = await r.follow();
    const snapshot = f.current();
    const blob = 'v1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA';
    await r.store.startRotation({ root: 'user-ca', nextSealed: blob, fromFingerprint: 'SHA256:x', nextFingerprint: 'SHA256:y', startedAt: new Date(), startedBy: 'apikey:test' });
    await t.throwsAsync(f.refresh(), { message: /does not open under this node's user CA/ });
    t.is(f.current(), snapshot, 'the snapshot stays');
    t.is((await r.store.findNode(NODE))?.rotationAck, null, 'no ack for a key it could not load');
    t.is((await r.store.activeRotation())?.phase, 'prepare', 'so learn does not begin');
    t.true(r.logs.some((l) => l.includes('rotation: following the store failed')));
    t.false(r.logs.some((l) => l.includes(blob.slice(3, 20))), 'the blob is not logged');
    // A node (re)starting meanwhile starts on its keys, so that the rotation can be rolled back through it.
    const restarted = await r.follow();
    t.is(restarted.current().rotation, null);
    await rollbackRotation(r.deps(restarted), ADMIN);
    await f.refresh();
    t.is(await r.store.activeRotation(), null);
  });
});
