/**
 * A request body whose Content-Encoding does not match its bytes, from an
 * unauthenticated client: a 400 with a code, not a 500, and nothing stored.
 */
import test from 'ava';
import { request } from 'node:https';
import { gzipSync } from 'node:zlib';
import { withBroker, dataPaths, type TestBroker } from '../../../testkit/broker.js';
import { snapshotState } from '../../../testkit/db-snapshot.js';

function postEncoded(b: TestBroker, path: string, body: Buffer, encoding: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, b.broker.apiUrl), {
      method: 'POST', rejectUnauthorized: false, agent: false,
      headers: { 'content-type': 'application/json', 'content-encoding': encoding, 'content-length': body.length },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('fail/a garbage gzip or deflate body on /v1 is BAD_REQUEST (400), not a 500; a valid gzip body is read', (t) =>
  withBroker(async (b) => {
    const before = await snapshotState(dataPaths(b.dir).database);
    for (const [encoding, body] of [['gzip', Buffer.from('this is not gzip at all')], ['deflate', Buffer.from('nor deflate')], ['gzip', gzipSync('{"token":').subarray(0, 12)]] as const) {
      const res = await postEncoded(b, '/v1/enroll', body, encoding);
      t.is(res.status, 400, `${encoding}: ${res.body}`);
      t.is((JSON.parse(res.body) as { error: { code: string } }).error.code, 'BAD_REQUEST', encoding);
    }
    t.deepEqual(await snapshotState(dataPaths(b.dir).database), before, 'nothing stored');
    // A well-formed gzip body gets as far as the route (an unknown token).
    const ok = await postEncoded(b, '/v1/enroll', gzipSync(JSON.stringify({ token: 'cet_unknown', publicKey: 'ssh-ed25519 AAAA' })), 'gzip');
    t.not(ok.status, 500, ok.body);
    t.not((JSON.parse(ok.body) as { error: { code: string } }).error.code, 'INTERNAL');
  }));
