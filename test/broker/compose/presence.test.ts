import test from 'ava';
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
