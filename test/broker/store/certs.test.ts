/** Certificates, serials and the KRL version (broker/store/certs.ts): 64-bit exact, no overflow. */
import test from 'ava';
import { isBrokerError } from '../../../broker/core/errors.js';
import { openStore } from '../../../broker/store/index.js';
import { HOUR, T0, at, device, sql, withStore } from './fixtures.js';

test('ok/serials are 64-bit exact and stop before overflowing', async (t) => {
  await withStore(async (store, file) => {
    const max = 2n ** 63n - 1n;
    await store.insertDevice(device({ id: 'dev_x' }));
    const cert = {
      serial: max, deviceId: 'dev_x', kind: 'device', keyFingerprint: 'f', keyId: 'device:dev_x',
      principal: 'ports-1-2', validAfter: T0, validBefore: at(HOUR), issuedAt: T0,
    } as const;
    await store.insertCertificate(cert);
    t.deepEqual(await store.findCertificate(max), { ...cert, revokedAt: null });
    t.is(await store.findCertificate(max - 1n), null);
    t.false(await store.isSerialRevoked(max));
    await store.revokeCertificatesOfDevice('dev_x', T0);
    t.true(await store.isSerialRevoked(max));
    t.deepEqual(await store.listRevokedUnexpiredSerials(T0), [max]);
    await store.close();
    await sql(file, `UPDATE serial_counter SET value = 9223372036854775806`);
    const reopened = await openStore({ filename: file });
    try {
      t.is(await reopened.nextSerial(), max);
      const err = await t.throwsAsync(reopened.nextSerial());
      t.true(isBrokerError(err, 'INTERNAL'));
      t.is(await reopened.nextKrlVersion(), 1n);
      t.is(await reopened.nextKrlVersion(), 2n);
    } finally {
      await reopened.close();
    }
  });
});
