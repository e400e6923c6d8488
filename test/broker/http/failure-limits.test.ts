/**
 * Failed enrollments, renewals and bearer keys from strangers, against a real
 * broker: a source that keeps failing is answered RATE_LIMITED (429) before
 * the broker does any work for it, successes never spend its allowance, and
 * a flood of failures makes a few audit rows with a count, not one row each.
 */
import test from 'ava';
import { request } from 'node:https';
import type { ListAuditResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';

/** POST PATH with BODY (or GET with only HEADERS) from LOCALADDRESS; the status, error code and Retry-After. */
function send(b: TestBroker, localAddress: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; code?: string; retryAfter?: string }> {
  const text = body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, b.broker.apiUrl), {
      method, rejectUnauthorized: false, agent: false, localAddress,
      headers: { ...headers, ...(text ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const json = JSON.parse(Buffer.concat(chunks).toString() || '{}') as { error?: { code: string } };
        resolve({ status: res.statusCode ?? 0, code: json.error?.code, retryAfter: res.headers['retry-after'] });
      });
    });
    req.on('error', reject);
    req.end(text);
  });
}

const badEnroll = (): unknown => ({ token: `cte_${'x'.repeat(40)}`, publicKey: formatPublicKey(generateKeyPair().publicKey) });

async function auditRows(b: TestBroker, action: string): Promise<ListAuditResponse['items']> {
  const items: ListAuditResponse['items'] = [];
  let cursor: string | null = null;
  do {
    const page: ListAuditResponse = await b.call(b.admin, 'GET', `/v1/audit?action=${action}&limit=500${cursor ? `&cursor=${cursor}` : ''}`);
    items.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return items;
}

test('fail/flood of failed enrollments and bad keys: rate-limited per source, audited as a few rows with a count', async (t) => {
  await withBroker(async (b) => {
    const answers: Array<{ status: number; code?: string; retryAfter?: string }> = [];
    for (let i = 0; i < 300; i += 20) {
      answers.push(...(await Promise.all(Array.from({ length: 20 }, () => send(b, '127.0.0.2', 'POST', '/v1/enroll', badEnroll())))));
    }
    for (let i = 0; i < 100; i += 20) {
      answers.push(...(await Promise.all(Array.from({ length: 20 }, () => send(b, '127.0.0.2', 'GET', '/v1/devices', undefined, { authorization: 'Bearer ctk_guess_000000000000000000000000' })))));
    }
    const limited = answers.filter((a) => a.status === 429);
    t.true(limited.length >= 300, `${limited.length} of 400 answered 429`);
    t.true(limited.every((a) => a.code === 'RATE_LIMITED' && Number(a.retryAfter) >= 1));
    // Another address is not limited by this one's failures.
    t.is((await send(b, '127.0.0.3', 'POST', '/v1/enroll', badEnroll())).code, 'TOKEN_UNKNOWN');
    const enrollRows = await auditRows(b, 'device.enroll');
    const keyRows = await auditRows(b, 'auth.failure');
    t.true(enrollRows.length + keyRows.length <= 10, `${enrollRows.length} + ${keyRows.length} audit rows for 400 failures`);
  });
});

test('ok/successes never spend the allowance; repeats within the window become one row with a count', async (t) => {
  await withBroker(async (b) => {
    const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 6 });
    for (const { token } of tokens) {
      t.is((await send(b, '127.0.0.4', 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(generateKeyPair().publicKey) })).status, 201);
    }
    const failed = [];
    for (let i = 0; i < 5; i++) failed.push((await send(b, '127.0.0.4', 'POST', '/v1/enroll', badEnroll())).code);
    t.deepEqual(failed, ['TOKEN_UNKNOWN', 'TOKEN_UNKNOWN', 'TOKEN_UNKNOWN', 'RATE_LIMITED', 'RATE_LIMITED']);
    const refusals = (): Promise<ListAuditResponse['items']> => auditRows(b, 'device.enroll').then((rows) => rows.filter((r) => r.outcome === 'TOKEN_UNKNOWN'));
    t.is((await refusals()).length, 1, 'the first failure is written at once, the repeats are counted');
    b.clock.advance(61_000); // the window has passed: the next failure elsewhere closes nothing, the flush writes the count
    t.is((await send(b, '127.0.0.5', 'POST', '/v1/enroll', badEnroll())).code, 'TOKEN_UNKNOWN');
    await waitUntil(async () => (await refusals()).some((r) => r.details.repeated === 2));
    const count = (await refusals()).find((r) => r.details.repeated === 2)!;
    t.like(count, { actor: 'anonymous', remoteAddr: '127.0.0.4' });
  }, { config: { api: { failureBurst: 3, failuresPerMinute: 0.1 }, audit: { aggregateSeconds: 1 } } });
});

async function waitUntil(cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
