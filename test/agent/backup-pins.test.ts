/**
 * Backup pins (api.backupPins, docs/rotation.md "Backup pins"): a TLS key
 * held in reserve is told to devices in every trust set, so an operator can
 * later serve a certificate for it — one from a public CA, say, or after
 * the served key leaked — with a restart and no rotation, and devices that
 * only ever pinned the old key follow. Real processes: `certunnel init`,
 * the broker twice on the same data directory, the agent enrolled and run
 * by the CLI.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError, apiRequest, type CaResponse } from '../../api/index.js';
import { generateTlsIdentity } from '../../broker/compose/tls.js';
import { runCli, spawnBroker, type BrokerProcess } from '../../testkit/cli.js';
import { startDeviceService } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { agentConfig, answersWithin, spawnAgent } from './fixtures.js';
import { freePool, freePort } from './net-fixtures.js';

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']);
});

test('ok/a backup pin: devices learn it in their trust set; the broker restarted on the backup key is accepted, the old pin alone is not', async (t) => {
  t.timeout(180_000);
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const [apiPort, sshPort] = [await freePort(), await freePort()];
    const pool = await freePool(2);
    const init = await runCli(['init', '--data', data, '--api-listen', `127.0.0.1:${apiPort}`, '--ssh-listen', `127.0.0.1:${sshPort}`, '--port-range', `${pool.first}-${pool.last}`]);
    t.is(init.code, 0, init.stderr);
    const oldPin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    const backup = generateTlsIdentity(['localhost', '127.0.0.1']);
    const configPath = join(data, 'config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as { api: Record<string, unknown> } & Record<string, unknown>;
    config.api.backupPins = [backup.pin];
    config.certs = { deviceValiditySeconds: 60, renewAtFraction: 0.1 };
    config.ports = { ...pool, perDevice: 2 };
    await writeFile(configPath, JSON.stringify(config));

    let broker: BrokerProcess = await spawnBroker(['--data', data]);
    const svc = await startDeviceService('kiosk:');
    const web = await startDeviceService('kiosk-web:');
    let agent: ReturnType<typeof spawnAgent> | undefined;
    try {
      const ca = await apiRequest<CaResponse>({ baseUrl: broker.apiUrl, pin: oldPin }, 'GET', '/v1/ca');
      t.deepEqual(ca.trust?.apiPins, [oldPin, backup.pin], 'the trust set names the served key, then the backup');
      const backupOnly = await t.throwsAsync(apiRequest({ baseUrl: broker.apiUrl, pin: backup.pin }, 'GET', '/healthz'));
      t.is((backupOnly as ApiError).code, 'PIN_MISMATCH', 'the backup key is not served yet');

      const admin = (/^\s+(ctk_\S+)$/m.exec(init.stdout) ?? [])[1]!;
      const minted = await apiRequest<{ tokens: Array<{ token: string }> }>({ baseUrl: broker.apiUrl, pin: oldPin, apiKey: admin }, 'POST', '/v1/tokens', { count: 1 });
      const stateDir = join(dir, 'state');
      const cfg = join(dir, 'agent.json');
      await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: broker.apiUrl, pin: oldPin }, stateDir, 'ssh2', svc, web)));
      const enrolled = await runCli(['agent', 'enroll', '--config', cfg, '--name', 'kiosk'], { CERTUNNEL_ENROLL_TOKEN: minted.tokens[0]!.token });
      t.is(enrolled.code, 0, enrolled.stderr);
      const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { trust: { apiPins: string[] } };
      t.deepEqual(state.trust.apiPins, [oldPin, backup.pin], 'the device stored the backup pin');

      // The operator serves a certificate for the backup key and restarts the broker: no rotation.
      await broker.stop();
      await writeFile(join(data, 'tls', 'api.key'), backup.keyPem, { mode: 0o600 });
      await writeFile(join(data, 'tls', 'api.crt'), backup.certPem);
      await writeFile(join(data, 'tls', 'api.pin'), `${backup.pin}\n`);
      broker = await spawnBroker(['--data', data]);
      const oldOnly = await t.throwsAsync(apiRequest({ baseUrl: broker.apiUrl, pin: oldPin }, 'GET', '/healthz'));
      t.is((oldOnly as ApiError).code, 'PIN_MISMATCH', 'a device holding only the old pin would be cut off');

      // The device, configured with the old pin only, renews through the backup key and tunnels.
      agent = spawnAgent(['run', '--config', cfg]);
      const renewed = await agent.waitForLog((l) => l.event === 'renewed', 'a renewal through the backup key', 60_000);
      await agent.waitForLog((l) => l.event === 'connected', 'the tunnel up', 60_000, agent.logs.indexOf(renewed));
      await answersWithin(pool.first, 'hi', 'kiosk:hi', 30_000);
      t.false(agent.logs.some((l) => l.code === 'PIN_MISMATCH'), agent.output().slice(-2000));
      const after = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { trust: { apiPins: string[] } };
      t.deepEqual(after.trust.apiPins, [backup.pin], 'served and backup are one key now');
    } finally {
      await agent?.stop();
      await broker.stop();
      await svc.close();
      await web.close();
    }
  });
});

test('fail/api.backupPins: not a pin, or more than two, is a configuration error naming the setting', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0']);
    t.is(init.code, 0, init.stderr);
    const configPath = join(data, 'config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as { api: Record<string, unknown> };
    const pin = `sha256//${'A'.repeat(43)}=`;
    for (const backupPins of [['sha256//short'], ['sha1//AAAA'], [pin, pin, pin]]) {
      config.api.backupPins = backupPins;
      await writeFile(configPath, JSON.stringify(config));
      const started = await runCli(['broker', '--data', data]);
      t.not(started.code, 0);
      t.regex(started.stderr, /api\.backupPins/, JSON.stringify(backupPins));
    }
  });
});
