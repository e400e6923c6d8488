import test from 'ava';
import { join } from 'node:path';
import { type ApiClientOptions, apiRequest } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { runCli, spawnBroker } from '../../../testkit/cli.js';
import { countRows } from '../../../testkit/db-snapshot.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { readFile } from 'node:fs/promises';

test('ok/SIGKILL during enrollments leaves a consistent database', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0']);
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)![1]!;
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    let broker = await spawnBroker(['--data', data, '--log-level', 'silent']);
    const admin: ApiClientOptions = { baseUrl: broker.apiUrl, pin, apiKey: adminKey };
    const { tokens } = await apiRequest<{ tokens: Array<{ token: string }> }>(admin, 'POST', '/v1/tokens', { count: 400 });

    let done = 0;
    const anonymous: ApiClientOptions = { baseUrl: broker.apiUrl, pin, timeoutMs: 5000 };
    const inFlight = tokens.map((x) =>
      apiRequest(anonymous, 'POST', '/v1/enroll', { token: x.token, publicKey: formatPublicKey(generateKeyPair().publicKey) }).then(
        () => done++,
        () => undefined,
      ),
    );
    // Kill once some enrollments have committed and others are in flight.
    while (done < 40) await new Promise((r) => setTimeout(r, 5));
    await broker.stop('SIGKILL');
    await Promise.all(inFlight);
    t.true(done < 400, 'the kill landed while enrollments were in flight');

    broker = await spawnBroker(['--data', data, '--log-level', 'silent']);
    try {
      const db = join(data, 'broker.sqlite');
      const used = await countRows(db, 'SELECT COUNT(*) AS n FROM enrollment_tokens WHERE used_at IS NOT NULL');
      const devices = await countRows(db, 'SELECT COUNT(*) AS n FROM devices');
      t.true(used >= done, `${used} tokens used, ${done} enrollments answered`);
      t.is(devices, used);
      t.is(await countRows(db, 'SELECT COUNT(*) AS n FROM enrollment_tokens t WHERE used_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = t.used_by_device)'), 0);
      t.is(await countRows(db, 'SELECT COUNT(*) AS n FROM devices d WHERE NOT EXISTS (SELECT 1 FROM enrollment_tokens t WHERE t.id = d.token_id AND t.used_at IS NOT NULL)'), 0);
      t.is(await countRows(db, 'SELECT COUNT(*) AS n FROM devices d WHERE NOT EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id)'), 0);
      t.is(await countRows(db, 'SELECT COUNT(*) AS n FROM devices d WHERE NOT EXISTS (SELECT 1 FROM port_blocks p WHERE p.device_id = d.id)'), 0);
      // And the broker works after the restart: a fresh token enrolls.
      const next = await apiRequest<{ tokens: Array<{ token: string }> }>({ ...admin, baseUrl: broker.apiUrl }, 'POST', '/v1/tokens', { count: 1 });
      await apiRequest({ baseUrl: broker.apiUrl, pin }, 'POST', '/v1/enroll', { token: next.tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey) });
      t.is(await countRows(db, 'SELECT COUNT(*) AS n FROM devices'), devices + 1);
    } finally {
      await broker.stop();
    }
  });
});
