/**
 * Errors that point the right way, through the real binary against a real
 * broker: a missing or wrong pin says so and how to fix it; an unknown device
 * names the name asked for and the nearest one, to keys that may list devices.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { apiRequest, type MintTokensResponse } from '../../api/index.js';
import { runCli, spawnBroker } from '../../testkit/cli.js';
import { withTempDir } from '../../testkit/openssh.js';

const INIT = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '21000-21999'];
const OTHER_PIN = 'sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';

test('fail/pin and unknown-device errors say what to do', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, ...INIT, '--json']);
    t.is(init.code, 0, init.stderr);
    const { adminKey } = JSON.parse(init.stdout) as { adminKey: string };
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    const broker = await spawnBroker(['--data', data, '--log-level', 'warn']);
    try {
      const env = { CERTUNNEL_API_KEY: adminKey, CERTUNNEL_API_PIN: '' };
      const noPin = await runCli(['device', 'list', '--api', broker.apiUrl], env);
      t.is(noPin.code, 1);
      t.regex(noPin.stderr, /^certunnel: TLS_PIN_REQUIRED: .*--pin sha256\/\/.*tls\/api\.pin/m);
      const wrongPin = await runCli(['device', 'list', '--api', broker.apiUrl, '--pin', OTHER_PIN], env);
      t.regex(wrongPin.stderr, /^certunnel: PIN_MISMATCH: .*tls\/api\.pin/m);
      const agentNoPin = await runCli(['agent', 'enroll', '--url', broker.apiUrl, '--token', 'ctt_not-a-real-token', '--state-dir', join(dir, 'state'), '--json']);
      t.is((JSON.parse(agentNoPin.stderr) as { error: { code: string } }).error.code, 'TLS_PIN_REQUIRED');

      const minted = await runCli(['token', 'create', '--data', data, '--json'], env);
      const token = (JSON.parse(minted.stdout) as MintTokensResponse).tokens[0]!.token;
      await apiRequest({ baseUrl: broker.apiUrl, pin }, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'kiosk-0001' });

      for (const [asked, hint] of [['kiosk-001', /did you mean kiosk-0001\?/], ['KIOSK-0001', /did you mean kiosk-0001\?/], ['printer-9', /^(?!.*did you mean)/]] as const) {
        for (const args of [['device', 'show', asked], ['device', 'revoke', asked]]) {
          const r = await runCli([...args, '--data', data, '--json'], env);
          t.is(r.code, 1);
          const error = (JSON.parse(r.stderr.trim().split('\n').at(-1)!) as { error: { code: string; message: string } }).error;
          t.is(error.code, 'DEVICE_UNKNOWN');
          t.true(error.message.includes(JSON.stringify(asked)), error.message);
          t.regex(error.message, hint);
        }
      }
      // A key that may not list devices learns no name from a suggestion.
      const provisioner = await runCli(['apikey', 'create', '--data', data, '--role', 'provisioner', '--name', 'factory']);
      const probe = await runCli(['device', 'show', 'kiosk-001', '--data', data], { ...env, CERTUNNEL_API_KEY: provisioner.stdout.trim() });
      t.is(probe.code, 1);
      t.false(probe.stderr.includes('kiosk-0001'), probe.stderr);
      t.false((await runCli(['device', 'list', '--data', data], env)).stdout.includes('revoked'), 'nothing was revoked by the misses');
    } finally {
      await broker.stop('SIGTERM');
    }
  });
});
