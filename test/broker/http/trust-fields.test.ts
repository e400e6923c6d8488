/**
 * `trust` in grants, GET /v1/ca and GET /v1/broker (issue #14): what the
 * broker's TrustRoots says now, flipped with set(); `ssh.hostKey` and the
 * top-level host key stay the presented key (what agents before 0.5 pin)
 * until the rotation commits.
 */
import test from 'ava';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import type { BrokerStatusResponse, CaResponse, EnrollResponse, OperatorCertificateResponse, RenewResponse } from '../../../api/index.js';
import { fingerprint, formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { withBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice } from '../../../testkit/device-tunnel.js';
import { startDeviceService } from '../../../testkit/gateway.js';
import { dataDirTrust, hostKeyRotation, type SettableTrustRoots } from '../../../testkit/trust.js';
import type { TrustSnapshot } from '../../../broker/core/trust-roots.js';

test('ok/trust follows the snapshot: at rest, learn (both keys), committed (the next alone, presented)', async (t) => {
  let roots: SettableTrustRoots | undefined;
  let initial: TrustSnapshot | undefined;
  let hostCa: Awaited<ReturnType<typeof dataDirTrust>>['hostCa'] | undefined;
  await withBroker(async (b) => {
    const current = formatPublicKey(initial!.hostKey.publicKey);
    const at = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.deepEqual(at.trust, { hostKeys: [current], hostCertificateAuthorities: [formatPublicKey(initial!.hostCa)], apiPins: [b.init.apiPin] });
    t.is(at.hostKey, current);
    t.is(at.apiPin, b.init.apiPin);

    const rotation = hostKeyRotation(initial!, hostCa!);
    const next = formatPublicKey(rotation.next.publicKey);
    roots!.set(rotation.learn);
    const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.deepEqual(ca.trust!.hostKeys, [current, next]);
    t.is(ca.hostKey, current, 'learn: the presented key is still the current one');
    t.is(ca.ssh.hostKey, current);
    const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: tokens[0]!.token, publicKey: formatPublicKey(key.publicKey) });
    t.deepEqual(grant.trust, ca.trust);
    t.is(grant.ssh.hostKey, current);
    const status = await b.call<BrokerStatusResponse>(b.admin, 'GET', '/v1/broker');
    t.deepEqual(status.trust, ca.trust);
    t.is(status.fingerprints.hostKey, fingerprint(initial!.hostKey.publicKey));

    roots!.set(rotation.committed);
    const renewed = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key }));
    t.deepEqual(renewed.trust!.hostKeys, [next]);
    t.is(renewed.ssh.hostKey, next, 'committed: pre-0.5 agents are told the new key');
    const after = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.is(after.hostKey, next);
    t.is((await b.call<BrokerStatusResponse>(b.admin, 'GET', '/v1/broker')).fingerprints.hostKey, fingerprint(rotation.next.publicKey));
  }, {
    trustRoots: async (dir) => {
      ({ roots, initial, hostCa } = await dataDirTrust(dir));
      return roots;
    },
  });
});

test('ok/an operator certificate names the presented host key: the next once committed', async (t) => {
  let rig: Awaited<ReturnType<typeof dataDirTrust>> | undefined;
  await withBroker(async (b) => {
    const service = await startDeviceService('');
    const device = await enrollTestDevice(b, 'op-trust');
    const tunnel = await connectDevice(device, b.broker.sshPort, service.port);
    try {
      const ask = (): Promise<OperatorCertificateResponse> =>
        b.call<OperatorCertificateResponse>(b.admin, 'POST', `/v1/devices/${device.id}/operator-certificate`, { publicKey: formatPublicKey(generateKeyPair().publicKey) });
      t.is((await ask()).ssh.hostKey, formatPublicKey(rig!.initial.hostKey.publicKey));
      const rotation = hostKeyRotation(rig!.initial, rig!.hostCa);
      rig!.roots.set(rotation.committed);
      t.is((await ask()).ssh.hostKey, formatPublicKey(rotation.next.publicKey));
    } finally {
      await tunnel.stop();
      await service.close();
    }
  }, {
    trustRoots: async (dir) => {
      rig = await dataDirTrust(dir);
      return rig.roots;
    },
  });
});

test('ok/plain HTTP: no pins, apiPin null', async (t) => {
  await withBroker(async (b) => {
    const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
    t.is(ca.apiPin, null);
    t.deepEqual(ca.trust!.apiPins, []);
    t.is(ca.trust!.hostKeys[0], ca.hostKey);
  }, { config: { api: { insecureHttp: true } } });
});
