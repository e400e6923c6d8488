/**
 * The pure parts of console single sign-on: claims → role, the sealed flow
 * cookie, the used-state set, the client secret's sources, the refusal
 * pages.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../../broker/core/config.js';
import { claimValues, hasClaim, identityFromClaims, roleFor } from '../../../broker/oidc/claims.js';
import { deriveFlowKey, openFlow, sameState, sealFlow, UsedStates, type FlowState } from '../../../broker/oidc/flow-state.js';
import { readOidcClientSecret } from '../../../broker/oidc/client-secret.js';
import { oidcRefusalPage, providerErrorName } from '../../../broker/oidc/pages.js';
import { isBrokerError } from '../../../broker/core/errors.js';

const MAPPING = { admins: 'admin', ops: 'operator', factory: 'provisioner' } as const;

const roleCases: Array<[string, string[], 'admin' | 'operator' | 'provisioner' | undefined]> = [
  ['ok/admin', ['admins'], 'admin'],
  ['ok/strongest-wins', ['factory', 'ops', 'admins'], 'admin'],
  ['ok/operator-over-provisioner', ['factory', 'ops'], 'operator'],
  ['ok/provisioner', ['staff', 'factory'], 'provisioner'],
  ['fail/no-mapped-value', ['staff', 'Admins', 'admins '], undefined],
  ['fail/none', [], undefined],
  ['fail/prototype-names', ['__proto__', 'constructor', 'toString'], undefined],
];
for (const [name, values, want] of roleCases) {
  test(`roleFor ${name}`, (t) => {
    t.is(roleFor(values, MAPPING), want);
  });
}

const claimCases: Array<[string, Record<string, unknown>, string | string[], string[]]> = [
  ['ok/array', { groups: ['a', 'b'] }, 'groups', ['a', 'b']],
  ['ok/single-string', { groups: 'a' }, 'groups', ['a']],
  ['ok/non-strings-dropped', { groups: ['a', 1, null, { x: 1 }] }, 'groups', ['a']],
  ['ok/nested-keycloak', { realm_access: { roles: ['ops'] } }, ['realm_access', 'roles'], ['ops']],
  ['ok/url-claim-name', { 'https://example.com/roles': ['ops'] }, 'https://example.com/roles', ['ops']],
  ['fail/absent', { sub: 'x' }, 'groups', []],
  ['fail/object', { groups: { a: 1 } }, 'groups', []],
  ['fail/nested-through-array', { realm_access: [{ roles: ['ops'] }] }, ['realm_access', 'roles'], []],
  ['fail/inherited', {}, 'toString', []],
];
for (const [name, claims, path, want] of claimCases) {
  test(`claimValues ${name}`, (t) => {
    t.deepEqual(claimValues(claims, path), want);
    t.is(hasClaim(claims, path), !name.startsWith('fail/absent') && !name.startsWith('fail/inherited') && !name.startsWith('fail/nested-through'));
  });
}

test('identityFromClaims: who, role, session end; control characters in e-mail or name are dropped', (t) => {
  const config = { groupsClaim: 'groups', roles: MAPPING, sessionMinutes: 60 } as const;
  const now = new Date('2030-01-01T00:00:00Z');
  const ok = identityFromClaims({ sub: 'u1', email: 'a@example.com', name: 'A\u0007B', preferred_username: 'ab', groups: ['ops'] }, config, 'https://id', now);
  t.deepEqual(ok, { ok: true, identity: { subject: 'u1', issuer: 'https://id', email: 'a@example.com', name: 'ab', role: 'operator', expiresAt: new Date('2030-01-01T01:00:00Z') } });
  t.deepEqual(identityFromClaims({ sub: 'u2', groups: ['staff'] }, config, 'https://id', now), { ok: false, subject: 'u2', email: null, values: ['staff'] });
});

const FLOW: FlowState = { state: 'st', nonce: 'no', codeVerifier: 'cv', next: '/console/', startedAt: 1_900_000_000_000 };

test('flow cookie: sealed and opened with the same key; altered, truncated, foreign or other-key values are not', (t) => {
  const key = deriveFlowKey(randomBytes(32));
  const sealed = sealFlow(key, FLOW);
  t.deepEqual(openFlow(key, sealed), FLOW);
  t.not(sealFlow(key, FLOW), sealed, 'a fresh IV each time');
  t.false(sealed.includes('cv'), 'the verifier is not readable');
  const body = Buffer.from(sealed.slice(3), 'base64url');
  for (let i = 0; i < body.length; i += 7) {
    const flipped = Buffer.from(body);
    flipped[i] = flipped[i]! ^ 1;
    t.is(openFlow(key, `v1.${flipped.toString('base64url')}`), undefined, `byte ${i} flipped`);
  }
  t.is(openFlow(key, sealed.slice(0, -4)), undefined);
  t.is(openFlow(key, `v2.${sealed.slice(3)}`), undefined);
  t.is(openFlow(key, undefined), undefined);
  t.is(openFlow(key, 'v1.'), undefined);
  t.is(openFlow(deriveFlowKey(randomBytes(32)), sealed), undefined, 'another broker\'s key');
  t.throws(() => deriveFlowKey(randomBytes(16)));
});

test('flow cookie: the key is derived per purpose, not the session key itself', (t) => {
  const secret = randomBytes(32);
  t.false(deriveFlowKey(secret).equals(secret));
  t.true(deriveFlowKey(secret).equals(deriveFlowKey(secret)), 'every node sharing the session key derives the same');
});

test('sameState', (t) => {
  t.true(sameState('abc', 'abc'));
  t.false(sameState('abd', 'abc'));
  t.false(sameState('', 'abc'));
  t.false(sameState(null, 'abc'));
});

test('UsedStates: once per state until its sign-in would have expired; bounded', (t) => {
  const used = new UsedStates(1000, 3);
  t.true(used.consume('a', 0));
  t.false(used.consume('a', 500));
  t.true(used.consume('a', 1500), 'expired entries are forgotten (the flow cookie has expired by then)');
  for (const s of ['b', 'c', 'd', 'e']) used.consume(s, 1600);
  t.true(used.size <= 3);
});

test('client secret: from the file (relative to the data dir, trailing newline dropped), else the environment; missing is CONFIG_INVALID', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-oidc-'));
  try {
    await writeFile(join(dir, 'oidc-secret'), 'file-secret\n', { mode: 0o600 });
    const base = { issuer: 'https://id.example.com', clientId: 'c', roles: { a: 'admin' } };
    const withFile = parseConfig({ oidc: { ...base, clientSecretFile: 'oidc-secret' } }, dir).oidc!;
    t.is(await readOidcClientSecret(withFile, dir, { CERTUNNEL_OIDC_CLIENT_SECRET: 'env' }), 'file-secret', 'the file wins');
    const fromEnv = parseConfig({ oidc: base }, dir).oidc!;
    t.is(await readOidcClientSecret(fromEnv, dir, { CERTUNNEL_OIDC_CLIENT_SECRET: 'env-secret' }), 'env-secret');
    const missing = await t.throwsAsync(readOidcClientSecret(fromEnv, dir, {}));
    t.true(isBrokerError(missing, 'CONFIG_INVALID'));
    const noFile = parseConfig({ oidc: { ...base, clientSecretFile: '/nonexistent/secret' } }, dir).oidc!;
    const unreadable = await t.throwsAsync(readOidcClientSecret(noFile, dir, {}));
    t.true(isBrokerError(unreadable, 'CONFIG_INVALID'));
    t.regex(unreadable!.message, /ENOENT/);
    await writeFile(join(dir, 'two-lines'), 'a\nb\n');
    const twoLines = await t.throwsAsync(readOidcClientSecret(parseConfig({ oidc: { ...base, clientSecretFile: 'two-lines' } }, dir).oidc!, dir, {}));
    t.false(twoLines!.message.includes('a\nb'), 'the value is not repeated');
    const publicClient = parseConfig({ oidc: { ...base, tokenEndpointAuthMethod: 'none' } }, dir).oidc!;
    t.is(await readOidcClientSecret(publicClient, dir, { CERTUNNEL_OIDC_CLIENT_SECRET: 'ignored' }), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('refusal pages: the stable code in header and page; only a defined provider error is shown', (t) => {
  const page = oidcRefusalPage('OIDC_PROVIDER_REFUSED', providerErrorName('<script>alert(1)</script>'));
  t.is(page.status, 403);
  t.is(page.headers['x-certunnel-error'], 'OIDC_PROVIDER_REFUSED');
  t.regex(page.html, /<code>other<\/code>/);
  t.false(page.html.includes('<script'));
  t.is(providerErrorName('login_required'), 'login_required');
  t.is(providerErrorName(null), 'other');
  t.is(oidcRefusalPage('OIDC_NO_ROLE').status, 403);
  t.is(oidcRefusalPage('OIDC_STATE_EXPIRED').status, 400);
  t.is(oidcRefusalPage('OIDC_PROVIDER_UNAVAILABLE').status, 502);
});
