/**
 * The `oidc` config section: defaults, and every bad value refused with
 * CONFIG_INVALID naming the field (and never echoing a secret).
 */
import test from 'ava';
import { parseConfig } from '../../../broker/core/config.js';
import { isBrokerError } from '../../../broker/core/errors.js';

const GOOD = { issuer: 'https://id.example.com/realms/ops', clientId: 'certunnel', clientSecretFile: 'oidc-secret', roles: { 'certunnel-admins': 'admin' } };

test('ok/absent: no single sign-on', (t) => {
  t.is(parseConfig({}, '/data').oidc, undefined);
});

test('ok/defaults', (t) => {
  const { oidc } = parseConfig({ oidc: GOOD }, '/data');
  t.like(oidc, {
    tokenEndpointAuthMethod: 'client_secret_basic', groupsClaim: 'groups', sessionMinutes: 480, loginTimeoutSeconds: 600, requestTimeoutSeconds: 10,
    allowInsecureIssuer: false, redirectUrl: undefined,
  });
  t.deepEqual(oidc!.scopes, ['openid', 'email', 'profile']);
  t.true(Object.isFrozen(oidc!.roles), 'frozen with the rest of the config');
});

test('ok/a nested claim path, a public client, an explicit redirect URL', (t) => {
  const { oidc } = parseConfig({
    oidc: { issuer: GOOD.issuer, clientId: 'c', tokenEndpointAuthMethod: 'none', groupsClaim: ['realm_access', 'roles'], roles: { ops: 'operator' }, redirectUrl: 'https://broker.example.com/console/oidc/callback' },
  }, '/data');
  t.deepEqual(oidc!.groupsClaim, ['realm_access', 'roles']);
});

test('ok/http issuer only with allowInsecureIssuer (tests)', (t) => {
  t.is(parseConfig({ oidc: { ...GOOD, issuer: 'http://127.0.0.1:9999', allowInsecureIssuer: true } }, '/data').oidc!.issuer, 'http://127.0.0.1:9999');
});

const bad: Array<[string, Record<string, unknown>, RegExp]> = [
  ['fail/http-issuer', { issuer: 'http://id.example.com' }, /oidc\.issuer: must be https/],
  ['fail/issuer-not-a-url', { issuer: 'id.example.com' }, /oidc\.issuer/],
  ['fail/issuer-ftp', { issuer: 'ftp://id.example.com', allowInsecureIssuer: true }, /oidc\.issuer/],
  ['fail/no-client-id', { clientId: undefined }, /oidc\.clientId/],
  ['fail/empty-roles', { roles: {} }, /oidc\.roles/],
  ['fail/unknown-role', { roles: { ops: 'superuser' } }, /oidc\.roles\.ops/],
  ['fail/proxy-role', { roles: { ops: 'proxy' } }, /oidc\.roles\.ops/],
  ['fail/scopes-without-openid', { scopes: ['email'] }, /oidc\.scopes: must include openid/],
  ['fail/scope-with-space', { scopes: ['openid', 'a b'] }, /oidc\.scopes\.1/],
  ['fail/public-client-with-secret-file', { tokenEndpointAuthMethod: 'none' }, /oidc\.clientSecretFile/],
  ['fail/session-too-short', { sessionMinutes: 1 }, /oidc\.sessionMinutes/],
  ['fail/login-timeout-too-long', { loginTimeoutSeconds: 86400 }, /oidc\.loginTimeoutSeconds/],
  ['fail/unknown-field', { clientSecrets: 'x' }, /oidc/],
  ['fail/redirect-not-url', { redirectUrl: '/console/oidc/callback' }, /oidc\.redirectUrl/],
  ['fail/empty-claim-path', { groupsClaim: [] }, /oidc\.groupsClaim/],
];
for (const [name, change, message] of bad) {
  test(`config ${name}`, (t) => {
    const err = t.throws(() => parseConfig({ oidc: { ...GOOD, ...change } }, '/data'));
    t.true(isBrokerError(err, 'CONFIG_INVALID'), String(err));
    t.regex(err!.message, message);
  });
}

test('fail/a client secret in config.json is refused, and the message does not repeat it', (t) => {
  const err = t.throws(() => parseConfig({ oidc: { ...GOOD, clientSecret: 'hunter2-very-secret' } }, '/data'));
  t.true(isBrokerError(err, 'CONFIG_INVALID'));
  t.regex(err!.message, /oidc\.clientSecret: .*clientSecretFile.*CERTUNNEL_OIDC_CLIENT_SECRET/);
  t.false(err!.message.includes('hunter2'));
});
