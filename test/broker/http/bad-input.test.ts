import test from 'ava';
import { request } from 'node:https';
import { connect } from 'node:tls';
import { type ApiClientOptions } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { withBroker, dataPaths, type TestBroker } from '../../../testkit/broker.js';
import { snapshotState } from '../../../testkit/db-snapshot.js';
import { makeOpensshKey } from '../../../testkit/openssh.js';
import { apiErrorCode as code } from '../../../testkit/api-error.js';

/** Sends raw bytes as a request body (the API client only sends valid JSON). */
function rawPost(b: TestBroker, path: string, body: Buffer | string, contentType = 'application/json', apiKey?: string): Promise<{ status: number; json: { error?: { code: string; message: string } } }> {
  return new Promise((resolve, reject) => {
    const url = new URL(path, b.broker.apiUrl);
    const req = request(url, {
      method: 'POST', rejectUnauthorized: false, agent: false,
      headers: { 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || '{}') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Runs the refusals and checks that the stored state is byte-for-byte unchanged. */
async function unchanged(t: { deepEqual(a: unknown, b: unknown, m?: string): void }, b: TestBroker, fn: () => Promise<void>): Promise<void> {
  const before = await snapshotState(dataPaths(b.dir).database);
  await fn();
  t.deepEqual(await snapshotState(dataPaths(b.dir).database), before, 'a refused request changed stored state');
}

test('fail/malformed enrollment requests get their code and change nothing', async (t) => {
  await withBroker(async (b) => {
    const [token] = (await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 })).tokens.map((x) => x.token);
    const rsa = await makeOpensshKey(b.dir, 'rsa', 'rsa');
    const key = formatPublicKey(generateKeyPair().publicKey);
    await unchanged(t, b, async () => {
      const cases: Array<[string, Buffer | string, string, string?]> = [
        ['malformed JSON', '{"token": ', 'BAD_REQUEST'],
        ['not an object', '[1,2,3]', 'BAD_REQUEST'],
        ['oversized body', JSON.stringify({ token: token, publicKey: 'x'.repeat(200_000) }), 'BODY_TOO_LARGE'],
        ['unknown field', JSON.stringify({ token, publicKey: key, admin: true }), 'BAD_REQUEST'],
        ['missing key', JSON.stringify({ token }), 'BAD_REQUEST'],
        ['RSA key', JSON.stringify({ token, publicKey: rsa.publicKeyLine }), 'KEY_UNSUPPORTED'],
        ['garbage key', JSON.stringify({ token, publicKey: 'ssh-ed25519 AAAAnotakey' }), 'KEY_INVALID'],
        ['SQL-shaped token', JSON.stringify({ token: "' OR 1=1 --", publicKey: key }), 'TOKEN_UNKNOWN'],
        ['SQL-shaped name', JSON.stringify({ token, publicKey: key, name: "x'; DROP TABLE devices; --" }), 'BAD_REQUEST'],
        ['form body', 'token=x', 'UNSUPPORTED_MEDIA_TYPE', 'application/x-www-form-urlencoded'],
        ['capabilities not a list', JSON.stringify({ token, publicKey: key, capabilities: 'trust-set-v1' }), 'BAD_REQUEST'],
        ['too many capabilities', JSON.stringify({ token, publicKey: key, capabilities: Array.from({ length: 33 }, (_, i) => `c${i}`) }), 'BAD_REQUEST'],
        ['an empty capability', JSON.stringify({ token, publicKey: key, capabilities: [''] }), 'BAD_REQUEST'],
      ];
      for (const [name, body, expected, type] of cases) {
        const res = await rawPost(b, '/v1/enroll', body, type);
        t.is(res.json.error?.code, expected, name);
        t.true(res.status >= 400 && res.status < 500, name);
        t.false(JSON.stringify(res.json).includes(token!), `${name}: the token leaked into the answer`);
      }
    });
    // The token still works afterwards: nothing consumed it (capabilities unknown to this broker are ignored).
    await b.call(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: key, capabilities: ['trust-set-v1', 'from-the-future-v9'] });
  });
});

test('fail/roles and API keys are enforced', async (t) => {
  await withBroker(async (b) => {
    const provisioner = await b.apiKey('provisioner');
    const operator = await b.apiKey('operator');
    const none: ApiClientOptions = b.anonymous;
    const wrong: ApiClientOptions = { ...b.anonymous, apiKey: `${b.init.adminKey.slice(0, -4)}AAAA` };
    await unchanged(t, b, async () => {
      t.is(await code(b.call(provisioner, 'GET', '/v1/devices')), 'FORBIDDEN');
      t.is(await code(b.call(provisioner, 'POST', '/v1/devices/x/revoke', {})), 'FORBIDDEN');
      t.is(await code(b.call(provisioner, 'GET', '/v1/audit')), 'FORBIDDEN');
      t.is(await code(b.call(operator, 'POST', '/v1/tokens', { count: 1 })), 'FORBIDDEN');
      t.is(await code(b.call(operator, 'POST', '/v1/apikeys', { role: 'admin', name: 'x' })), 'FORBIDDEN');
      t.is(await code(b.call(none, 'GET', '/v1/devices')), 'UNAUTHENTICATED');
      t.is(await code(b.call(wrong, 'GET', '/v1/devices')), 'UNAUTHENTICATED');
      t.is(await code(b.call({ ...b.anonymous, apiKey: "ctk_' OR 1=1 --" }, 'GET', '/v1/devices')), 'UNAUTHENTICATED');
      t.is(await code(b.call(operator, 'GET', '/v1/devices/dev_aaaaaaaaaaaaaaaa')), 'DEVICE_UNKNOWN');
      t.is(await code(b.call(operator, 'GET', "/v1/devices?name=%27%20OR%201%3D1%20--")), 'NONE');
      t.is(await code(b.call(b.admin, 'POST', '/v1/tokens', { count: 0 })), 'BAD_REQUEST');
      t.is(await code(b.call(b.admin, 'GET', '/v1/nowhere')), 'NOT_FOUND');
    });
    t.is(await code(b.call(provisioner, 'POST', '/v1/tokens', { count: 2 })), 'NONE');
    t.is(await code(b.call(operator, 'GET', '/v1/devices')), 'NONE');
    const failures = await b.call<{ items: unknown[] }>(b.admin, 'GET', '/v1/audit?action=auth.failure');
    // Three refused keys from one address in one audit.aggregateSeconds window: the first row now, the repeats as a count later.
    t.true(failures.items.length >= 1);
  });
});

test('fail/a broker that does not hold the pinned TLS key gets nothing', async (t) => {
  await withBroker(async (b) => {
    const otherPin = 'sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
    t.is(await code(b.call({ ...b.admin, pin: otherPin }, 'GET', '/v1/devices')), 'PIN_MISMATCH');
    // and the broker saw no request at all: no audit event, no log line for it
    const seen = b.logs.filter((l) => l.includes('"route"') && l.includes('/v1/devices'));
    t.is(seen.length, 0);
    // sanity: the TLS endpoint really is up
    await new Promise<void>((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: b.broker.apiPort, rejectUnauthorized: false }, () => { s.end(); resolve(); });
      s.on('error', reject);
    });
  });
});
