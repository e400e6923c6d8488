/**
 * api/: the broker's JSON answers carry exactly the fields of the contract's
 * Response and View types, in the order clients have always seen them (a
 * golden list per route: the types are erased at run time, the wire is not).
 */
import test from 'ava';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import type { BrokerStatusResponse, ListCertificatesResponse, ListTokenBatchesResponse, CaResponse, CreateApiKeyResponse, DeviceView, EnrollResponse, HealthResponse, ListApiKeysResponse, ListAuditResponse, ListDevicesResponse, ListTokensResponse, MintTokensResponse, RevokeApiKeyResponse, RevokeDeviceResponse, RevokeTokensResponse } from '../../api/index.js';
import { withBroker } from '../../testkit/broker.js';

const SSH_ENDPOINT = ['host', 'port', 'username', 'hostKey', 'hostCertificateAuthority'];
const TRUST_SET = ['hostKeys', 'hostCertificateAuthorities', 'apiPins'];
const API_KEY_VIEW = ['id', 'name', 'role', 'createdAt', 'createdBy', 'revokedAt', 'lastUsedAt', 'expiresAt', 'status'];
const DEVICE_VIEW = [
  'id', 'name', 'hardwareSerial', 'status', 'ports', 'publicKey', 'fingerprint', 'labels',
  'online', 'connectedSince', 'remoteAddr', 'lastSeenAt', 'createdAt', 'revokedAt', 'revokedBy', 'revokeReason',
];

test('ok/every JSON route answers the contract fields, in order', async (t) => {
  await withBroker(async (b) => {
    const keys = (value: object): string[] => Object.keys(value);

    t.deepEqual(await b.call<HealthResponse>(b.anonymous, 'GET', '/healthz'), { status: 'ok' });
    const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    // sshEndpoints (0.4) comes before ssh, not after the others: shell agents read "host" with a greedy sed, which finds the last.
    // trust (0.5) comes last.
    t.deepEqual(keys(ca), ['userCertificateAuthority', 'hostCertificateAuthority', 'hostKey', 'apiPin', 'sshEndpoints', 'ssh', 'trust']);
    t.deepEqual(keys(ca.trust!), TRUST_SET);
    t.deepEqual(keys(ca.ssh), SSH_ENDPOINT);
    t.deepEqual(ca.sshEndpoints, [{ host: ca.ssh.host, port: ca.ssh.port }]);

    const minted = await b.call<MintTokensResponse>(b.admin, 'POST', '/v1/tokens', { count: 2, batch: 'wire' });
    t.deepEqual(keys(minted), ['batch', 'tokens']);
    t.deepEqual(keys(minted.tokens[0]!), ['id', 'token', 'batch', 'bindName', 'bindSerial', 'expiresAt']);
    const listed = await b.call<ListTokensResponse>(b.admin, 'GET', '/v1/tokens?batch=wire');
    t.deepEqual(keys(listed), ['items', 'nextCursor']);
    t.deepEqual(keys(listed.items[0]!), ['id', 'batch', 'bindName', 'bindSerial', 'status', 'createdAt', 'createdBy', 'expiresAt', 'usedAt', 'usedByDevice', 'revokedAt']);
    t.deepEqual(await b.call<RevokeTokensResponse>(b.admin, 'POST', '/v1/tokens/revoke', { id: minted.tokens[1]!.id }), { revoked: 1 });

    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: minted.tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'wire-1' });
    t.deepEqual(keys(grant), ['deviceId', 'name', 'ports', 'certificate', 'serial', 'validAfter', 'validBefore', 'renewAfter', 'sshEndpoints', 'ssh', 'trust']);
    t.deepEqual(keys(grant.trust!), TRUST_SET);
    t.deepEqual(keys(grant.sshEndpoints![0]!), ['host', 'port']);
    t.deepEqual(keys(grant.ports), ['first', 'last']);
    t.deepEqual(keys(grant.ssh), SSH_ENDPOINT);

    const devices = await b.call<ListDevicesResponse>(b.admin, 'GET', '/v1/devices');
    t.deepEqual(keys(devices), ['items', 'nextCursor']);
    // Optional fields added with the console come last: the latest certificate of an enrolled device.
    t.deepEqual(keys(devices.items[0]!), [...DEVICE_VIEW, 'certificate']);
    const device = await b.call<DeviceView>(b.admin, 'GET', '/v1/devices/wire-1');
    t.deepEqual(keys(device), [...DEVICE_VIEW, 'certificate']);
    t.deepEqual(keys(device.certificate!), ['serial', 'validBefore', 'revoked']);
    t.is(device.certificate!.serial, grant.serial);
    const certs = await b.call<ListCertificatesResponse>(b.admin, 'GET', '/v1/devices/wire-1/certificates');
    t.deepEqual(keys(certs.items[0]!), ['serial', 'keyId', 'principal', 'fingerprint', 'validAfter', 'validBefore', 'issuedAt', 'revokedAt']);
    const batches = await b.call<ListTokenBatchesResponse>(b.admin, 'GET', '/v1/tokens/batches');
    t.deepEqual(batches.items.map((x) => ({ ...x, firstCreatedAt: '', lastCreatedAt: '', lastExpiresAt: '' })), [
      { batch: 'wire', total: 2, used: 1, active: 0, expired: 0, revoked: 1, firstCreatedAt: '', lastCreatedAt: '', lastExpiresAt: '' },
    ]);
    const broker = await b.call<BrokerStatusResponse>(b.admin, 'GET', '/v1/broker');
    t.deepEqual(keys(broker), ['health', 'fingerprints', 'apiPin', 'krlVersion', 'tunnelsOnline', 'startedAt', 'devices', 'trust', 'rotation']);
    t.is(broker.rotation, null, 'admins are told whether a rotation is under way: none here');
    t.deepEqual(device.ports, grant.ports);
    const revoked = await b.call<RevokeDeviceResponse>(b.admin, 'POST', '/v1/devices/wire-1/revoke', { reason: 'wire test' });
    t.deepEqual(keys(revoked), ['device', 'alreadyRevoked', 'certificatesRevoked']);
    // Optional fields added after v0.2.0 come after the others: revokedByName, as the admin key revoked it.
    t.deepEqual(keys(revoked.device), [...DEVICE_VIEW, 'revokedByName', 'certificate']);

    const audit = await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit');
    t.deepEqual(keys(audit), ['items', 'nextCursor']);
    const auditRow = ['id', 'at', 'actor', 'action', 'target', 'remoteAddr', 'outcome', 'details'];
    t.deepEqual(keys(audit.items.find((e) => !e.actor.startsWith('apikey:'))!), auditRow);
    t.deepEqual(keys(audit.items.find((e) => e.actor.startsWith('apikey:'))!), [...auditRow, 'actorName']);

    const created = await b.call<CreateApiKeyResponse>(b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'wire' });
    t.deepEqual(keys(created), ['id', 'name', 'role', 'key', 'expiresAt']);
    const apiKeys = await b.call<ListApiKeysResponse>(b.admin, 'GET', '/v1/apikeys');
    t.deepEqual(keys(apiKeys), ['items']);
    t.deepEqual(keys(apiKeys.items[0]!), API_KEY_VIEW);
    const revokedKey = await b.call<RevokeApiKeyResponse>(b.admin, 'POST', `/v1/apikeys/${created.id}/revoke`, {});
    t.deepEqual(keys(revokedKey), ['key', 'alreadyRevoked']);
    t.deepEqual(keys(revokedKey.key), API_KEY_VIEW);
  });
});
