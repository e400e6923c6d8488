/**
 * An api-tls rotation committed, then the broker restarted within the
 * renewal grace period: the retired identity is still served by its SNI
 * name (from the copy the commit kept, tls/api.key.retired-<id>), so an
 * agent that slept through the rotation and the restart still renews; the
 * default is the new key. Real processes: `certunnel init`, the broker
 * twice on one data directory, the rotation through the API.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { apiRequest, pinServerName, type HealthResponse, type RotationResponse } from '../../../api/index.js';
import { tlsPinOfSpki } from '../../../ca/index.js';
import { runCli, spawnBroker, type BrokerProcess } from '../../../testkit/cli.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { waitFor } from '../../../testkit/ssh-client.js';

function presentedPin(port: number, servername?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      resolve(tlsPinOfSpki(socket.getPeerCertificate().pubkey!));
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

test('ok/api-tls: after a commit and a restart the retired identity is still served by its SNI name; the old pin alone renews through it', async (t) => {
  t.timeout(120_000);
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0']);
    t.is(init.code, 0, init.stderr);
    const admin = (/^\s+(ctk_\S+)$/m.exec(init.stdout) ?? [])[1]!;
    const oldPin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    let broker: BrokerProcess = await spawnBroker(['--data', data]);
    try {
      const api = { baseUrl: broker.apiUrl, pin: oldPin, apiKey: admin };
      const started = await apiRequest<RotationResponse>(api, 'POST', '/v1/rotations', { root: 'api-tls' });
      await waitFor(async () => (await apiRequest<RotationResponse>(api, 'GET', '/v1/rotations/current')).rotation.phase === 'learn', 'learn', 20_000);
      const committed = await apiRequest<RotationResponse>(api, 'POST', '/v1/rotations/current/commit', {});
      t.is(committed.rotation.outcome, 'committed', 'no device lags: no force needed');
      const newPin = started.rotation.next;
      t.is((await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim(), newPin);

      await broker.stop();
      broker = await spawnBroker(['--data', data]);
      const port = Number(new URL(broker.apiUrl).port);
      t.is(await presentedPin(port), newPin, 'the default is the new key');
      t.is(await presentedPin(port, pinServerName(oldPin)!), oldPin, 'the retired one by its name, after the restart');
      t.deepEqual(await apiRequest<HealthResponse>({ baseUrl: broker.apiUrl, pin: oldPin }, 'GET', '/healthz'), { status: 'ok' }, 'the agents\' client finds it');
    } finally {
      await broker.stop();
    }
  });
});
