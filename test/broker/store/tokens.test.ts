/** Enrollment tokens (broker/store/tokens.ts): atomic redemption, why it fails, revocation, pagination. */
import { isBrokerError } from '../../../broker/core/errors.js';
import { tokenStatus } from '../../../broker/core/tokens.js';
import { HOUR, T0, at, token, withStore, test } from './fixtures.js';

test('ok/50 concurrent redemptions of one token: exactly one wins', async (t) => {
  await withStore(async (store) => {
    const tok = token();
    await store.insertTokens([tok]);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => store.redeemToken(tok.tokenHash, `dev_${i}`, T0)));
    t.is(results.filter(Boolean).length, 1);
    const found = await store.findTokenByHash(tok.tokenHash);
    t.is(found && tokenStatus(found, T0), 'used');
    t.is(found?.usedByDevice, `dev_${results.indexOf(true)}`);
  });
});

test('ok/tokens: why redemption fails, revocation by batch, pagination', async (t) => {
  await withStore(async (store) => {
    const [used, expired, revoked, fresh] = [token(), token({ expiresAt: at(HOUR) }), token({ batch: 'b1' }), token({ batch: 'b1' })];
    await store.insertTokens([used!, expired!, revoked!, fresh!]);
    t.true(await store.redeemToken(used!.tokenHash, 'dev_1', T0));
    t.is(await store.revokeTokens({ id: revoked!.id }, 'apikey:a', T0), 1);
    t.is(await store.revokeTokens({ id: used!.id }, 'apikey:a', T0), 0); // used: untouched
    const now = at(2 * HOUR);
    for (const [tok, status] of [[used, 'used'], [expired, 'expired'], [revoked, 'revoked'], [fresh, 'active']] as const) {
      t.is(tokenStatus((await store.findTokenByHash(tok!.tokenHash))!, now), status);
      t.is(await store.redeemToken(tok!.tokenHash, 'dev_2', now), status === 'active', status);
    }
    t.is(await store.findTokenByHash('unknown'), null);
    t.is(await store.revokeTokens({ batch: 'b1' }, 'apikey:a', now), 0); // fresh was just redeemed
    const many = Array.from({ length: 7 }, (_, i) => token({ batch: 'b2', createdAt: at(i % 3) }));
    await store.insertTokens(many);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await store.listTokens({ batch: 'b2', status: 'active', now, limit: 3, cursor });
      t.true(page.items.length <= 3);
      seen.push(...page.items.map((x) => x.id));
      cursor = page.nextCursor;
    } while (cursor);
    t.deepEqual(seen.sort(), many.map((x) => x.id).sort());
    t.is(await store.revokeTokens({ batch: 'b2' }, 'apikey:a', now), 7);
    t.deepEqual((await store.listTokens({ status: 'revoked', now })).items.length, 8);
    const bad = await t.throwsAsync(store.listTokens({ now, cursor: 'garbage' }));
    t.true(isBrokerError(bad, 'BAD_REQUEST'));
  });
});
