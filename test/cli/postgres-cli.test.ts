/**
 * Issue #13: `certunnel init --database-url` puts the store in PostgreSQL;
 * the broker runs on it (enroll, list, restart with the state kept); bad
 * URLs and a database that already holds a fleet are refused with a code,
 * the password never echoed; and while the database is away, live
 * requests get STORE_UNAVAILABLE, the broker stays up, and everything
 * resumes when it is back.
 */
import test from 'ava';
import { access, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { apiRequest, type EnrollResponse, type MintTokensResponse } from '../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { apiErrorCode } from '../../testkit/api-error.js';
import { runCli, spawnBroker } from '../../testkit/cli.js';
import { withTempDir } from '../../testkit/openssh.js';
import { createTestDatabase, startPostgres, type PostgresCluster } from '../../testkit/postgres.js';

const INIT = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '21000-21999'];

let cluster: PostgresCluster | undefined;
test.before(async () => {
  cluster = await startPostgres();
});
test.after.always(async () => {
  await cluster?.stop();
});

const exists = (path: string) => access(path).then(() => true, () => false);

test('init --database-url: bad URLs and a database in use refused, password never echoed; the broker runs on PostgreSQL and survives a database outage', async (t) => {
  const { url } = await createTestDatabase(cluster!);
  const password = new URL(url).password;
  await withTempDir(async (dir) => {
    for (const bad of [`mysql://u:${password}@127.0.0.1/db`, `postgres://u:${password}@127.0.0.1`, 'not a url']) {
      const r = await runCli(['init', '--data', join(dir, 'bad'), ...INIT, '--database-url', bad]);
      t.is(r.code, 1, bad);
      t.regex(r.stderr, /CONFIG_INVALID/);
      t.false(r.stderr.includes(password), 'the password is echoed');
      t.false(await exists(join(dir, 'bad')));
    }

    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, ...INIT, '--database-url', url]);
    t.is(init.code, 0, init.stderr);
    t.false(init.stdout.includes(password) || init.stderr.includes(password));
    t.is((await stat(join(data, 'database.url'))).mode & 0o777, 0o600);
    t.is((await readFile(join(data, 'database.url'), 'utf8')).trim(), url);
    t.false((await readFile(join(data, 'config.json'), 'utf8')).includes(password));
    t.false(await exists(join(data, 'broker.sqlite')), 'a SQLite file was made');
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)?.[1];
    t.truthy(adminKey);
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();

    // The database already holds this fleet: a second init refuses, creates nothing.
    const again = await runCli(['init', '--data', join(dir, 'second'), ...INIT, '--database-url', url]);
    t.is(again.code, 1);
    t.regex(again.stderr, /DATABASE_IN_USE/);
    t.false(await exists(join(dir, 'second')));

    const env = { CERTUNNEL_API_KEY: adminKey! };
    let broker = await spawnBroker(['--data', data, '--log-level', 'warn']);
    let deviceId: string;
    try {
      const minted = await runCli(['token', 'create', '--data', data, '--count', '3', '--json'], env);
      t.is(minted.code, 0, minted.stderr);
      const tokens = (JSON.parse(minted.stdout) as MintTokensResponse).tokens.map((x) => x.token);
      const enroll = (token: string, name: string) =>
        apiRequest<EnrollResponse>({ baseUrl: broker.apiUrl, pin }, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(generateKeyPair().publicKey), name });
      deviceId = (await enroll(tokens[0]!, 'pg-kiosk-1')).deviceId;
      t.is(await apiErrorCode(enroll(tokens[0]!, 'pg-kiosk-x')), 'TOKEN_USED');

      // The database goes away: enrollment fails with a clear code and changes nothing; the broker stays up.
      await cluster!.pause();
      t.is(await apiErrorCode(enroll(tokens[1]!, 'pg-kiosk-2')), 'STORE_UNAVAILABLE');
      t.is(broker.child.exitCode, null, 'the broker died with its database');
      await cluster!.resume();
      // Back: the same token still enrolls (the failed attempt used nothing).
      t.is((await enroll(tokens[1]!, 'pg-kiosk-2')).name, 'pg-kiosk-2');
      t.is(broker.child.exitCode, null, broker.stderr());
      t.false(broker.stderr().includes(password), 'the password is in the log');
    } finally {
      await broker.stop();
    }

    // State lives in PostgreSQL: a restarted broker has it.
    broker = await spawnBroker(['--data', data, '--log-level', 'warn']);
    try {
      const list = await runCli(['device', 'list', '--data', data], env);
      t.is(list.code, 0, list.stderr);
      t.regex(list.stdout, /pg-kiosk-1\s+active\s+21000-21001/);
      t.regex(list.stdout, /pg-kiosk-2\s+active/);
      const show = await runCli(['device', 'show', 'pg-kiosk-1', '--data', data, '--json'], env);
      t.is((JSON.parse(show.stdout) as { id: string }).id, deviceId);
    } finally {
      await broker.stop();
    }
  });
});
