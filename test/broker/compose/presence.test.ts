/**
 * Presence in the store against a real broker: a restart does not show
 * devices online that are not connected, and a presence write the store
 * refused for a while (STORE_BUSY) lands once it can (broker/core/presence-writer.ts).
 */
import test from 'ava';
import sqlite3 from 'sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../../broker/compose/load-config.js';
import { enrollDevice } from '../../../broker/core/enroll.js';
import { mintTokens } from '../../../broker/core/tokens.js';
import { initDataDir } from '../../../broker/compose/data-dir.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { startBroker } from '../../../broker/compose/start.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { dataPaths, withBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice } from '../../../testkit/device-tunnel.js';
import { startDeviceService } from '../../../testkit/gateway.js';
import { waitFor } from '../../../testkit/ssh-client.js';

test('ok/a restarted broker does not show devices online that are not connected to it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-presence-'));
  try {
    await initDataDir({ dir, config: { api: { listen: '127.0.0.1:0' }, ssh: { listen: '127.0.0.1:0' }, ports: { first: 24000, last: 24099 } } });
    const config = await loadConfig({ dataDir: dir });
    const logger = createLogger('silent');
    const actor = { id: 'system', remoteAddr: null };
    let broker = await startBroker({ config, logger });
    const { tokens } = await mintTokens(broker.core, { count: 1 }, actor);
    const grant = await enrollDevice(broker.core, { token: tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey) }, actor);
    // As if the broker died while the device was connected.
    await broker.store.setDeviceOnline(grant.deviceId, { online: true, since: new Date(), remoteAddr: '192.0.2.7', lastSeen: new Date() });
    await broker.close();

    broker = await startBroker({ config, logger });
    try {
      const device = await broker.store.findDevice(grant.deviceId);
      t.false(device!.online);
      t.is(device!.connectedSince, null);
      t.truthy(device!.lastSeenAt, 'last seen is kept');
    } finally {
      await broker.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** Another connection to the broker's SQLite file, holding its write lock until release() (as a backup or a stuck CLI would). */
async function holdWriteLock(file: string): Promise<{ release(): Promise<void> }> {
  const db = await new Promise<sqlite3.Database>((resolve, reject) => {
    const d = new sqlite3.Database(file, (err) => (err ? reject(err) : resolve(d)));
  });
  const exec = (sql: string) => new Promise<void>((resolve, reject) => db.exec(sql, (err) => (err ? reject(err) : resolve())));
  await exec('BEGIN IMMEDIATE');
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await exec('COMMIT');
      await new Promise<void>((resolve) => db.close(() => resolve()));
    },
  };
}

/** Log lines of a presence write that failed with STORE_BUSY (the writer's, at any level). */
const busyPresenceLines = (logs: readonly string[]) => logs.filter((l) => l.includes('presence write') && l.includes('STORE_BUSY')).length;

test('fail/store-busy: a presence write that failed STORE_BUSY (the file locked by another connection) lands once the lock is gone, online and offline', async (t) => {
  await withBroker(async (b) => {
    const service = await startDeviceService('device\n');
    const device = await enrollTestDevice(b, 'kiosk-busy');
    let lock = await holdWriteLock(dataPaths(b.dir).database);
    let ssh: Awaited<ReturnType<typeof connectDevice>> | undefined;
    try {
      // The login needs reads only (WAL): the tunnel comes up, its presence write waits busy_timeout and fails.
      ssh = await connectDevice(device, b.broker.sshPort, service.port);
      await waitFor(() => busyPresenceLines(b.logs) > 0, 'the online write to fail STORE_BUSY', 60_000);
      t.false((await b.broker.store.findDevice(device.id))!.online, 'not written while the file is locked');
      await lock.release();
      await waitFor(async () => (await b.broker.store.findDevice(device.id))!.online, 'the online write to land after the lock is gone', 60_000);
      const metrics = (await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString();
      t.regex(metrics, /certunnel_presence_write_retries [1-9]/);
      t.regex(metrics, /certunnel_presence_writes_dropped 0/);
      await waitFor(() => b.logs.some((l) => l.includes('presence writes caught up after store failures')), 'the caught-up line', 30_000);

      // The same for the tunnel going down.
      const failedBefore = busyPresenceLines(b.logs);
      lock = await holdWriteLock(dataPaths(b.dir).database);
      await ssh.stop();
      await waitFor(() => busyPresenceLines(b.logs) > failedBefore, 'the offline write to fail STORE_BUSY', 60_000);
      t.true((await b.broker.store.findDevice(device.id))!.online, 'still online in the store while the file is locked');
      await lock.release();
      await waitFor(async () => !(await b.broker.store.findDevice(device.id))!.online, 'the offline write to land after the lock is gone', 60_000);
      t.regex((await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString(), /certunnel_presence_writes_pending 0/);
    } finally {
      await lock.release();
      await ssh?.stop();
      await service.close();
    }
  });
});
