/**
 * Upgrade: a data directory made by an earlier release (each of
 * RELEASE_FIXTURES: test/fixtures/v0.2.0, v0.3.0 and v0.4.0, see their READMEs)
 * opens in this broker. From v0.2.0, migration 002 rebuilds api_keys (a
 * wider role CHECK) and adds expires_at; from both, 003 adds the nodes
 * tables and devices.node_id. The old keys, their hashes and the devices,
 * tokens, certificates and audit rows must all survive, and the new
 * features (expiry, the proxy role, revocation) must work on it.
 */
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import {
  apiRequest, type ApiClientOptions, type CreateApiKeyResponse, type EnrollResponse, type ListApiKeysResponse, type ListAuditResponse,
  type ListDevicesResponse, type ListTokensResponse, type MintTokensResponse, type RevokeApiKeyResponse,
} from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { dataPaths, loadConfig, startBroker, createLogger, type RunningBroker } from '../../../broker/compose/index.js';
import { apiErrorCode as code } from '../../../testkit/api-error.js';
import { copyFixtureData, RELEASE_FIXTURES, type ReleaseFixture } from '../../../testkit/release-fixture.js';

interface FixtureKeys {
  admin: string;
  operator: string;
  provisioner: string;
}

/** A copy of the fixture's data directory, modes restored. */
async function copyFixture(fixture: ReleaseFixture): Promise<string> {
  const data = join(await mkdtemp(join(tmpdir(), 'certunnel-upgrade-')), 'data');
  await copyFixtureData(fixture.dir, data);
  return data;
}

async function withUpgradedBroker(
  fixture: ReleaseFixture,
  fn: (broker: RunningBroker, clients: Record<keyof FixtureKeys | 'anonymous', ApiClientOptions>) => Promise<void>,
): Promise<void> {
  const data = await copyFixture(fixture);
  const keys = JSON.parse(await readFile(join(fixture.dir, 'keys.json'), 'utf8')) as FixtureKeys;
  const started = Date.now();
  const logger = createLogger('warn', new Writable({ write: (_c, _e, cb) => cb() }));
  const broker = await startBroker({ config: await loadConfig({ dataDir: data }), logger, clock: () => new Date(fixture.time + Date.now() - started) });
  try {
    const anonymous = { baseUrl: broker.apiUrl, pin: (await readFile(dataPaths(data).apiPin, 'utf8')).trim() };
    await fn(broker, {
      anonymous, admin: { ...anonymous, apiKey: keys.admin }, operator: { ...anonymous, apiKey: keys.operator }, provisioner: { ...anonymous, apiKey: keys.provisioner },
    });
  } finally {
    await broker.close();
    await rm(join(data, '..'), { recursive: true, force: true });
  }
}

for (const fixture of RELEASE_FIXTURES) {
  const { release } = fixture;
  const FIXTURE = fixture.dir;
  const FIXTURE_TIME = fixture.time;

  test(`ok/upgrade from ${release}: old keys, devices, tokens and audit survive; the migrations ran`, (t) =>
    withUpgradedBroker(fixture, async (broker, c) => {
      const apiKeys = (await apiRequest<ListApiKeysResponse>(c.admin, 'GET', '/v1/apikeys')).items;
      t.deepEqual(apiKeys.map((k) => [k.name, k.role, k.status, k.expiresAt, k.revokedAt]), [
        ['initial-admin', 'admin', 'active', null, null], ['ops-alice', 'operator', 'active', null, null], ['factory', 'provisioner', 'active', null, null],
      ]);
      t.truthy(apiKeys[1]!.lastUsedAt, `last use recorded by ${release} is kept`);

      const devices = (await apiRequest<ListDevicesResponse>(c.operator, 'GET', '/v1/devices')).items;
      t.deepEqual(devices.map((d) => [d.name, d.status, d.ports, d.revokeReason]), [
        ['kiosk-1', 'active', { first: 20000, last: 20001 }, null], ['kiosk-2', 'revoked', { first: 20002, last: 20003 }, 'stolen'],
      ]);
      const tokens = (await apiRequest<ListTokensResponse>(c.provisioner, 'GET', '/v1/tokens?batch=line-1')).items;
      t.deepEqual(tokens.map((x) => x.status).sort(), ['active', 'revoked', 'used', 'used']);
      const audit = (await apiRequest<ListAuditResponse>(c.admin, 'GET', '/v1/audit?limit=1000')).items.map((e) => e.action);
      for (const action of ['apikey.create', 'token.mint', 'device.enroll', 'token.revoke', 'device.revoke']) t.true(audit.includes(action), action);
      t.deepEqual((await broker.store.listRevokedDeviceIds()).length, 1);

      // The old token still enrolls, into a fresh block (kiosk-2's stays quarantined).
      const fixtureTokens = JSON.parse(await readFile(join(FIXTURE, 'tokens.json'), 'utf8')) as MintTokensResponse;
      const active = tokens.find((x) => x.status === 'active')!;
      const secret = fixtureTokens.tokens.find((x) => x.id === active.id)!.token;
      const grant = await apiRequest<EnrollResponse>(c.anonymous, 'POST', '/v1/enroll', { token: secret, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'kiosk-3' });
      t.deepEqual(grant.ports, { first: 20004, last: 20005 });
      t.true(BigInt(grant.serial) > 2n, 'serials go on from the old ones');
      // The rebuilt table keeps its CHECK: only the known roles.
      const row = { id: 'key_aaaaaaaaaaaaaaaa', name: 'x', keyHash: 'h', createdAt: new Date(FIXTURE_TIME), createdBy: 'test' };
      await t.throwsAsync(broker.store.insertApiKey({ ...row, role: 'root' as 'admin' }));
      await t.notThrowsAsync(broker.store.insertApiKey({ ...row, role: 'proxy' }));
    }));

  test(`ok/upgrade from ${release}: expiry, the proxy role and revocation work on the old data`, (t) =>
    withUpgradedBroker(fixture, async (_broker, c) => {
      const proxy = await apiRequest<CreateApiKeyResponse>(c.admin, 'POST', '/v1/apikeys', { role: 'proxy', name: 'viewer', expiresAt: new Date(FIXTURE_TIME + 86400_000).toISOString() });
      t.is(await code(apiRequest({ ...c.anonymous, apiKey: proxy.key }, 'GET', '/v1/devices')), 'API_KEY_PROXY_ONLY');

      const operatorId = (await apiRequest<ListApiKeysResponse>(c.admin, 'GET', '/v1/apikeys')).items.find((k) => k.name === 'ops-alice')!.id;
      const revoked = await apiRequest<RevokeApiKeyResponse>(c.admin, 'POST', `/v1/apikeys/${operatorId}/revoke`, {});
      t.is(revoked.key.status, 'revoked');
      t.is(await code(apiRequest(c.operator, 'GET', '/v1/devices')), 'API_KEY_REVOKED');
      const adminId = c.admin.apiKey!.split('.')[0]!.slice('ctk_'.length);
      t.is(await code(apiRequest(c.admin, 'POST', `/v1/apikeys/${adminId}/revoke`, {})), 'LAST_ADMIN_KEY');
      t.is(await code(apiRequest(c.provisioner, 'GET', '/v1/tokens')), 'NONE', 'the other old keys are untouched');
    }));
}
