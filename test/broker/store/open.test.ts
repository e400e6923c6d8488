/** Opening a store (broker/store/open.ts, connections.ts): migrations, WAL, foreign keys, read-only opens. */
import test from 'ava';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isBrokerError } from '../../../broker/core/errors.js';
import { openStore } from '../../../broker/store/index.js';
import { MIGRATIONS } from '../../../broker/store/migrations/index.js';
import { POOL, T0, sql, token, withStore } from './fixtures.js';

test('ok/migrations run once; re-open keeps data; read-only open refuses writes', async (t) => {
  await withStore(async (store, file) => {
    await store.insertTokens([token({ id: 'tok_keep' })]);
    await store.close();
    // a clean close (cached statements finalized) checkpoints and removes the WAL
    t.false(existsSync(`${file}-wal`));
    const again = await openStore({ filename: file });
    await again.close();
    t.deepEqual(await sql(file, 'SELECT name FROM knex_migrations'), MIGRATIONS.map((m) => ({ name: m.name })));
    const ro = await openStore({ filename: file, readonly: true });
    try {
      t.is((await ro.listTokens({ now: T0 })).items[0]?.id, 'tok_keep');
      const err = await t.throwsAsync(ro.insertTokens([token()]));
      t.true(isBrokerError(err, 'INTERNAL'));
    } finally {
      await ro.close();
    }
    const missing = await t.throwsAsync(openStore({ filename: `${file}.missing`, readonly: true }));
    t.true(isBrokerError(missing, 'CONFIG_INVALID'));
  });
});

test('ok/WAL journal, foreign keys enforced', async (t) => {
  await withStore(async (store, file) => {
    t.deepEqual(await sql(file, 'PRAGMA journal_mode'), [{ journal_mode: 'wal' }]);
    const err = await t.throwsAsync(store.allocatePortBlock('dev_missing', POOL, T0));
    t.true(isBrokerError(err, 'DEVICE_UNKNOWN'));
  });
});

test('fail/world-readable: the database, its -wal and -shm are 0600 whatever the umask, an older 0644 file is narrowed', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-store-'));
  const file = join(dir, 'broker.sqlite');
  const previous = process.umask(0o022); // the usual login umask: new files 0644
  try {
    const store = await openStore({ filename: file });
    try {
      await store.insertTokens([token({ id: 'tok_mode' })]); // a write, so that -wal and -shm exist
      for (const path of [file, `${file}-wal`, `${file}-shm`]) t.is((await stat(path)).mode & 0o777, 0o600, path);
    } finally {
      await store.close();
    }
    await chmod(file, 0o644); // as brokers before this fix left it
    const again = await openStore({ filename: file });
    try {
      await again.insertTokens([token({ id: 'tok_mode_2' })]);
      for (const path of [file, `${file}-wal`, `${file}-shm`]) t.is((await stat(path)).mode & 0o777, 0o600, path);
    } finally {
      await again.close();
    }
  } finally {
    process.umask(previous);
    await rm(dir, { recursive: true, force: true });
  }
});
