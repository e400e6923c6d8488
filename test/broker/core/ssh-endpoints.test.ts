/**
 * ssh.endpoints: every SSH endpoint devices are told (a fleet of several
 * broker nodes), validated with CONFIG_INVALID, reaching enrollment and
 * renewal answers and GET /v1/ca through CoreDeps.sshEndpoints() as
 * `sshEndpoints`, with `ssh` (what older agents read) the first of them.
 */
import test from 'ava';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { type CaResponse, type EnrollResponse, type RenewResponse, type SshAddressWire } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { fromEnv, parseConfig } from '../../../broker/core/config.js';
import { isBrokerError } from '../../../broker/core/errors.js';
import { configuredSshEndpoints, sshGrantFields } from '../../../broker/core/ssh-endpoints.js';
import { staticTrustRoots } from '../../../broker/core/trust-roots.js';
import { withBroker } from '../../../testkit/broker.js';
import { restingSnapshot } from '../../../testkit/trust.js';

const KEYS = { userCa: generateKeyPair(), hostCa: generateKeyPair().publicKey, hostKey: generateKeyPair(), hostCertificate: 'unused' };
const OWN = { host: 'broker.example', port: 2222, username: 'tunnel', hostKey: formatPublicKey(KEYS.hostKey.publicKey), hostCertificateAuthority: formatPublicKey(KEYS.hostCa) };
const TRUST = restingSnapshot(KEYS).trust;

const good: Array<[string, string[], SshAddressWire[]]> = [
  ['ok/one', ['node-1.example:2222'], [{ host: 'node-1.example', port: 2222 }]],
  ['ok/three-in-order', ['b.example:22', 'a.example:2222', '10.0.0.3:65535'], [{ host: 'b.example', port: 22 }, { host: 'a.example', port: 2222 }, { host: '10.0.0.3', port: 65535 }]],
  ['ok/ipv6-in-brackets', ['[2001:db8::1]:2222', '127.0.0.1:1'], [{ host: '2001:db8::1', port: 2222 }, { host: '127.0.0.1', port: 1 }]],
];
for (const [name, endpoints, want] of good) {
  test(`ssh.endpoints ${name}`, (t) => {
    const config = parseConfig({ ssh: { endpoints } }, '/data');
    t.deepEqual(configuredSshEndpoints(config, OWN), want);
  });
}

test('ok/ssh.endpoints unset: the one endpoint devices are told today', (t) => {
  t.deepEqual(configuredSshEndpoints(parseConfig({}, '/data'), OWN), [{ host: 'broker.example', port: 2222 }]);
});

const bad: Array<[string, unknown]> = [
  ['fail/empty-list', []],
  ['fail/not-a-list', 'a.example:22'],
  ['fail/no-port', ['a.example']],
  ['fail/port-zero', ['a.example:0']],
  ['fail/port-too-big', ['a.example:65536']],
  ['fail/space-in-host', ['a b.example:22']],
  ['fail/comma-in-host', ['a,b.example:22']],
  ['fail/newline', ['a.example:22\nMatch all']],
  ['fail/ipv6-without-brackets', ['2001:db8::1:22:x']],
  ['fail/duplicate', ['a.example:22', 'A.example:22']],
  ['fail/number', [22]],
  ['fail/too-many', Array.from({ length: 65 }, (_, i) => `n${i}.example:22`)],
];
for (const [name, endpoints] of bad) {
  test(`ssh.endpoints ${name}`, (t) => {
    const err = t.throws(() => parseConfig({ ssh: { endpoints } }, '/data'));
    t.true(isBrokerError(err, 'CONFIG_INVALID'), String(err));
    t.regex(err!.message, /ssh\.endpoints/);
  });
}

test('ok/CERTUNNEL_SSH_ENDPOINTS: a comma-separated list', (t) => {
  const config = parseConfig(fromEnv({ CERTUNNEL_SSH_ENDPOINTS: 'a.example:2222, b.example:2223,' }), '/data');
  t.deepEqual(config.ssh.endpoints, ['a.example:2222', 'b.example:2223']);
  const err = t.throws(() => parseConfig(fromEnv({ CERTUNNEL_SSH_ENDPOINTS: 'a.example:2222,b.example' }), '/data'));
  t.true(isBrokerError(err, 'CONFIG_INVALID'));
});

test('ok/sshGrantFields asks the seam at every grant: ssh is the first endpoint; an empty answer is this broker', (t) => {
  let answer: SshAddressWire[] = [{ host: 'n2.example', port: 22 }, { host: 'n1.example', port: 2222 }];
  const deps = { ssh: OWN, sshEndpoints: () => answer, trustRoots: staticTrustRoots(restingSnapshot(KEYS)) };
  t.deepEqual(sshGrantFields(deps), { sshEndpoints: answer, ssh: { ...OWN, host: 'n2.example', port: 22 }, trust: TRUST });
  answer = [{ host: 'n3.example', port: 2000 }];
  t.deepEqual(sshGrantFields(deps).sshEndpoints, [{ host: 'n3.example', port: 2000 }]);
  answer = [];
  t.deepEqual(sshGrantFields(deps), { sshEndpoints: [{ host: 'broker.example', port: 2222 }], ssh: OWN, trust: TRUST });
});

test('ok/a broker with ssh.endpoints: enrollment, renewal and GET /v1/ca carry the list, ssh is its first', async (t) => {
  const endpoints = ['127.0.0.1:40001', 'node-2.example:2222', '[::1]:40003'];
  const want = [{ host: '127.0.0.1', port: 40001 }, { host: 'node-2.example', port: 2222 }, { host: '::1', port: 40003 }];
  await withBroker(async (b) => {
    const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.deepEqual(ca.sshEndpoints, want);
    t.like(ca.ssh, { host: '127.0.0.1', port: 40001, hostKey: ca.hostKey, hostCertificateAuthority: ca.hostCertificateAuthority });
    const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: tokens[0]!.token, publicKey: formatPublicKey(key.publicKey) });
    t.deepEqual(grant.sshEndpoints, want);
    t.deepEqual(grant.ssh, ca.ssh);
    const renewed = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key }));
    t.deepEqual(renewed.sshEndpoints, want);
    t.deepEqual(renewed.ssh, ca.ssh);
  }, { config: { ssh: { endpoints } } });
});

test('ok/a broker without ssh.endpoints: the list is its one endpoint, ssh as before', async (t) => {
  await withBroker(async (b) => {
    const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.is(ca.ssh.port, b.broker.sshPort);
    t.deepEqual(ca.sshEndpoints, [{ host: ca.ssh.host, port: b.broker.sshPort }]);
  });
});
