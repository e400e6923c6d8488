/** Certificates, serials and the KRL version (broker/store/certs.ts): 64-bit exact, no overflow. */
import { isBrokerError } from '../../../broker/core/errors.js';
import { FIND_ISSUED_SQL } from '../../../broker/store/certs.js';
import { HOUR, POOL, T0, at, device, sql, withStore, test, openAt, currentBackend } from './fixtures.js';

test('ok/serials are 64-bit exact and stop before overflowing', async (t) => {
  await withStore(async (store, file) => {
    const max = 2n ** 63n - 1n;
    await store.insertDevice(device({ id: 'dev_x' }));
    const cert = {
      serial: max, deviceId: 'dev_x', kind: 'device', keyFingerprint: 'f', keyId: 'device:dev_x',
      principal: 'ports-1-2', validAfter: T0, validBefore: at(HOUR), issuedAt: T0,
    } as const;
    await store.insertCertificate(cert);
    t.deepEqual(await store.findCertificate(max), { ...cert, revokedAt: null, signedBy: null, trustRotation: null });
    t.is(await store.findCertificate(max - 1n), null);
    t.false(await store.isSerialRevoked(max));
    await store.revokeCertificatesOfDevice('dev_x', T0);
    t.true(await store.isSerialRevoked(max));
    t.deepEqual(await store.listRevokedUnexpiredSerials(T0), [max]);
    await store.close();
    await sql(file, `UPDATE serial_counter SET value = 9223372036854775806`);
    const reopened = await openAt(file);
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

test('findIssuedCertificate: the certificate as issued and its device as it is now, in one primary-key lookup', async (t) => {
  await withStore(async (store, file) => {
    const dev = device({ id: 'dev_i', keyFingerprint: 'SHA256:dev' });
    await store.insertDevice(dev);
    const block = await store.allocatePortBlock(dev.id, POOL, T0);
    const issued = {
      serial: 7n, deviceId: dev.id, kind: 'device', keyFingerprint: 'SHA256:dev', keyId: `device:${dev.id}`,
      principal: `ports-${block.first}-${block.last}`, validAfter: T0, validBefore: at(HOUR), issuedAt: T0,
    } as const;
    const operator = { ...issued, serial: 8n, kind: 'operator', keyFingerprint: 'SHA256:op', keyId: `operator:alice:device:${dev.id}`, principal: `reach-${block.first}-${block.last}` } as const;
    const orphan = { ...issued, serial: 9n, deviceId: null } as const;
    for (const c of [issued, operator, orphan]) await store.insertCertificate(c);
    const active = { id: dev.id, status: 'active', portFirst: block.first, portLast: block.last };

    t.deepEqual(await store.findIssuedCertificate(7n), { certificate: { ...issued, revokedAt: null, signedBy: null, trustRotation: null }, device: active });
    t.deepEqual(await store.findIssuedCertificate(8n), { certificate: { ...operator, revokedAt: null, signedBy: null, trustRotation: null }, device: active });
    t.deepEqual(await store.findIssuedCertificate(9n), { certificate: { ...orphan, revokedAt: null, signedBy: null, trustRotation: null }, device: null });
    // Never issued, and serials no counter hands out (a forged certificate may carry them): null, never a throw.
    for (const serial of [6n, 10n, 0n, 2n ** 63n, 2n ** 64n - 1n]) t.is(await store.findIssuedCertificate(serial), null, String(serial));

    // Revoked: the serial and the device say so; the block stays on the device row as history.
    await store.transaction(async (tx) => {
      await tx.markDeviceRevoked(dev.id, 'apikey:test', null, at(1000));
      await tx.revokeCertificatesOfDevice(dev.id, at(1000));
    });
    t.like(await store.findIssuedCertificate(7n), { certificate: { revokedAt: at(1000) }, device: { ...active, status: 'revoked' } });
    // Inside a transaction too (its own writes visible).
    t.like(await store.transaction((tx) => tx.findIssuedCertificate(8n)), { certificate: { kind: 'operator', revokedAt: at(1000) } });

    // The plan of the statement the store runs: a SEARCH of each table by its primary key's index, no SCAN.
    if (currentBackend() !== 'sqlite') return; // PostgreSQL's planner picks by table statistics
    const plan = await sql<{ detail: string }>(file, `EXPLAIN QUERY PLAN ${FIND_ISSUED_SQL}`, ['7']);
    t.is(plan.length, 2, JSON.stringify(plan));
    t.regex(plan[0]!.detail, /^SEARCH c USING (INDEX sqlite_autoindex_certificates_1|INTEGER PRIMARY KEY) \(serial=\?\)$/);
    t.regex(plan[1]!.detail, /^SEARCH d USING INDEX sqlite_autoindex_devices_1 \(id=\?\)/);
    t.false(plan.some((row) => /SCAN/.test(row.detail)));
  });
});
