/** agent/enroll.ts in process: the key stays local, a bad grant or a refusal leaves nothing behind. */
import test from 'ava';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError, type EnrollRequest } from '../../api/index.js';
import { enrollDevice } from '../../agent/enroll.js';
import { AgentError, EXIT } from '../../agent/errors.js';
import { formatCertificate, generateKeyPair, parsePublicKey, signDeviceCert } from '../../ca/index.js';
import { withBroker } from '../../testkit/broker.js';
import { withTempDir } from '../../testkit/openssh.js';
import { enrolledDevice, mintToken } from './fixtures.js';

test('ok/real broker: only the public key is sent; the grant is stored; the broker logs no secret', async (t) => {
  await withBroker(async (b) => {
    await withTempDir(async (dir) => {
      const token = await mintToken(b);
      const sent: EnrollRequest[] = [];
      const enrollment = await enrollDevice({
        stateDir: join(dir, 'state'), broker: { url: b.broker.apiUrl, pin: b.init.apiPin }, token, name: 'kiosk-9',
        api: async (options, method, path, body) => {
          sent.push(body as EnrollRequest);
          return b.call(options, method, path, body);
        },
      });
      t.deepEqual(Object.keys(sent[0]!).sort(), ['capabilities', 'name', 'publicKey', 'token']);
      t.deepEqual(sent[0]!.capabilities, ['trust-set-v1']);
      t.true(parsePublicKey(sent[0]!.publicKey).equals(enrollment.key.publicKey));
      const keyText = await readFile(join(dir, 'state', 'device_key'), 'utf8');
      t.false(JSON.stringify(sent).includes(keyText.split('\n')[1]!), 'no private key material in the request');
      t.is((await stat(join(dir, 'state', 'device_key'))).mode & 0o777, 0o600);
      t.is(enrollment.state.name, 'kiosk-9');
      t.is(enrollment.state.broker.pin, b.init.apiPin);
      t.false(b.logs.some((l) => l.includes(token)), 'the broker never logs the token');
    });
  });
});

test('fail/a grant that certifies another key is refused and nothing is stored', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  await withTempDir(async (dir) => {
    const stateDir = join(dir, 'state');
    const err = await t.throwsAsync(enrollDevice({
      stateDir, broker: { url: 'https://127.0.0.1:9' }, token: 'ctt_whatever_token',
      api: async <T>() => {
        const grant = device.grant({ now: Date.now() });
        const other = signDeviceCert({ ca: device.ca, publicKey: generateKeyPair().publicKey, deviceId: device.deviceId, ports: device.ports, serial: 9n, now: new Date() });
        return { ...grant, certificate: formatCertificate(other) } as T;
      },
    }));
    t.is((err as AgentError).code, 'GRANT_INVALID');
    t.deepEqual(await readdir(stateDir), [], 'not even the pending key is left');
  });
  await device.close();
});

test('fail/refusal codes map to exit statuses: token problems are REFUSED, transport problems ERROR', async (t) => {
  await withTempDir(async (dir) => {
    for (const [code, status] of [['TOKEN_USED', EXIT.REFUSED], ['TOKEN_EXPIRED', EXIT.REFUSED], ['NAME_TAKEN', EXIT.REFUSED], ['UNREACHABLE', EXIT.ERROR], ['STORE_BUSY', EXIT.ERROR]] as const) {
      const err = await t.throwsAsync(enrollDevice({
        stateDir: join(dir, code), broker: { url: 'https://127.0.0.1:9' }, token: 'ctt_whatever_token',
        api: async () => {
          throw new ApiError(code, `broker says ${code}`, 409);
        },
      }));
      t.is((err as AgentError).code, code);
      t.is((err as AgentError).exitCode, status, code);
      // A refusal leaves nothing; after a failure the broker may have answered unheard: the key waits for the retry.
      t.deepEqual(await readdir(join(dir, code)), status === EXIT.REFUSED ? [] : ['device_key.pending'], code);
    }
  });
});

test('ok/a lost answer does not lose the token: the retry presents the same key and gets the same device', async (t) => {
  await withBroker(async (b) => {
    await withTempDir(async (dir) => {
      const token = await mintToken(b);
      const stateDir = join(dir, 'state');
      const broker = { url: b.broker.apiUrl, pin: b.init.apiPin };
      const sent: EnrollRequest[] = [];
      // The broker enrolls the device, but the answer never arrives.
      const lost = await t.throwsAsync(enrollDevice({
        stateDir, broker, token, name: 'kiosk-lost',
        api: async (options, method, path, body) => {
          sent.push(body as EnrollRequest);
          await b.call(options, method, path, body);
          throw new ApiError('TIMEOUT', 'no answer in 30 s', 0);
        },
      }));
      t.is((lost as AgentError).exitCode, EXIT.ERROR);
      t.deepEqual(await readdir(stateDir), ['device_key.pending']);
      const enrollment = await enrollDevice({
        stateDir, broker, token, name: 'kiosk-lost',
        api: async (options, method, path, body) => {
          sent.push(body as EnrollRequest);
          return b.call(options, method, path, body);
        },
      });
      t.is(sent[1]!.publicKey, sent[0]!.publicKey, 'the same key again');
      t.true(parsePublicKey(sent[0]!.publicKey).equals(enrollment.key.publicKey));
      const devices = await b.call<{ items: Array<{ id: string }> }>(b.admin, 'GET', '/v1/devices');
      t.deepEqual(devices.items.map((d) => d.id), [enrollment.state.deviceId], 'one device, the one first enrolled');
      t.false((await readdir(stateDir)).includes('device_key.pending'));
    });
  });
});
