/**
 * `capabilities` in enrollment and renewal requests (issue #14): today's
 * broker takes a well-formed list (unknown strings too) and refuses a
 * malformed one with BAD_REQUEST, changing nothing; a broker whose schema
 * lacks the field refuses it with exactly what the agent recognises as "an
 * older broker" (agent/capabilities.ts) and retries without.
 */
import test from 'ava';
import { z } from 'zod';
import { AGENT_CAPABILITIES, ApiError, type EnrollResponse, type RenewRequest } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { refusesCapabilitiesField } from '../../../agent/capabilities.js';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { parseWith } from '../../../broker/http/schemas.js';
import { BrokerError } from '../../../broker/core/errors.js';
import { apiErrorCode as code } from '../../../testkit/api-error.js';
import { withBroker } from '../../../testkit/broker.js';

test('ok/capabilities: enrollment and renewal take a list of capability strings, unknown ones included', async (t) => {
  await withBroker(async (b) => {
    const [token] = (await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 })).tokens.map((x) => x.token);
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', {
      token, publicKey: formatPublicKey(key.publicKey), capabilities: [AGENT_CAPABILITIES.trustSet, 'from-the-future-v9'],
    });
    t.regex(grant.deviceId, /^dev_/);
    const renew: RenewRequest = { ...buildRenewRequest({ deviceId: grant.deviceId, key }), capabilities: [AGENT_CAPABILITIES.trustSet] };
    const renewed = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/renew', renew);
    t.not(renewed.serial, grant.serial);
    t.is(await code(b.call(b.anonymous, 'POST', '/v1/renew', { ...buildRenewRequest({ deviceId: grant.deviceId, key }), capabilities: [] })), 'NONE');
  });
});

test('fail/capabilities: a malformed list is BAD_REQUEST naming the field, and the token stays unused', async (t) => {
  await withBroker(async (b) => {
    const [token] = (await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 })).tokens.map((x) => x.token);
    const key = generateKeyPair();
    const publicKey = formatPublicKey(key.publicKey);
    const malformed: Array<[string, unknown]> = [
      ['not a list', 'trust-set-v1'],
      ['a number', [1]],
      ['a space', ['trust set']],
      ['a control character', ['trust\u0007']],
      ['empty string', ['']],
      ['too long', ['x'.repeat(65)]],
      ['too many', Array.from({ length: 17 }, (_, i) => `c${i}`)],
    ];
    for (const [name, capabilities] of malformed) {
      const err = await b.call(b.anonymous, 'POST', '/v1/enroll', { token, publicKey, capabilities }).then(() => null, (e: unknown) => e);
      t.true(err instanceof ApiError, name);
      t.is((err as ApiError).code, 'BAD_REQUEST', name);
      t.regex((err as ApiError).message, /^capabilities/, name);
      t.false(refusesCapabilitiesField(err), `${name}: a bad value is not an older broker`);
    }
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token, publicKey });
    t.is(await code(b.call(b.anonymous, 'POST', '/v1/renew', { ...buildRenewRequest({ deviceId: grant.deviceId, key }), capabilities: [7] })), 'BAD_REQUEST');
  });
});

test('an older schema (no capabilities field) refuses the field with what the agent takes for an older broker', (t) => {
  const older = z.strictObject({ token: z.string(), publicKey: z.string() });
  const err = t.throws(() => parseWith(older, { token: 't', publicKey: 'k', capabilities: ['trust-set-v1'] }));
  t.true(err instanceof BrokerError);
  const asSeen = new ApiError((err as BrokerError).code, err!.message, 400);
  t.true(refusesCapabilitiesField(asSeen));
  t.false(refusesCapabilitiesField(new ApiError('BAD_REQUEST', 'body: unknown field(s): admin', 400)));
});
