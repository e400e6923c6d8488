/** Devices (broker/store/devices.ts): data never read as SQL, stable codes for duplicates, the device with its latest certificate. */
import { isBrokerError } from '../../../broker/core/errors.js';
import { HOUR, POOL, T0, at, device, token, withStore, test } from './fixtures.js';

const NASTY = [`' OR 1=1 --`, `"; DROP TABLE devices; --`, '100%_\\'];

test('ok/injection-shaped strings are data: stored verbatim, match only themselves', async (t) => {
  await withStore(async (store) => {
    await store.insertDevice(device({ name: 'plain', labels: { site: 'hall' } }));
    for (const s of NASTY) {
      await store.insertDevice(device({ name: s, labels: { [s]: s, site: s } }));
      await store.insertTokens([token({ batch: s, bindName: s })]);
    }
    await store.insertTokens([token({ batch: 'plain' })]);
    for (const s of NASTY) {
      const found = await store.findDeviceByName(s);
      t.is(found?.name, s);
      t.deepEqual(found?.labels, { [s]: s, site: s });
      t.deepEqual((await store.listDevices({ nameContains: s })).items.map((d) => d.name), [s]);
      t.deepEqual((await store.listDevices({ label: { key: 'site', value: s } })).items.map((d) => d.name), [s]);
      t.deepEqual((await store.listDevices({ label: { key: s, value: s } })).items.map((d) => d.name), [s]);
      const toks = (await store.listTokens({ batch: s, now: T0 })).items;
      t.deepEqual(toks.map((x) => [x.batch, x.bindName]), [[s, s]]);
    }
    t.deepEqual((await store.listDevices({ nameContains: '%' })).items.map((d) => d.name), ['100%_\\']);
    t.deepEqual((await store.listDevices({ label: { key: 'site', value: 'hall' } })).items.map((d) => d.name), ['plain']);
    t.is((await store.countDevicesByStatus()).active, 4);
  });
});

test('fail/duplicate fingerprint or name: stable codes, no SQL in messages', async (t) => {
  await withStore(async (store) => {
    const a = device({ name: 'kiosk-1' });
    const b = device({ name: 'kiosk-2' });
    await store.insertDevice(a);
    await store.insertDevice(b);
    const cases = [
      ['KEY_ALREADY_ENROLLED', store.insertDevice(device({ keyFingerprint: a.keyFingerprint }))],
      ['NAME_TAKEN', store.insertDevice(device({ name: 'kiosk-1' }))],
      ['KEY_ALREADY_ENROLLED', store.updateDeviceKey(b.id, 'ssh-ed25519 AAAA new', a.keyFingerprint)],
    ] as const;
    for (const [code, promise] of cases) {
      const err = await t.throwsAsync(promise);
      t.true(isBrokerError(err, code), `${code}: ${String(err)}`);
      t.notRegex(err!.message, /insert|update|devices|SQLITE/i);
    }
    t.true(await store.updateDeviceKey(b.id, 'ssh-ed25519 AAAA new', 'SHA256:new'));
    t.is((await store.findDeviceByFingerprint('SHA256:new'))?.id, b.id);
    const err = await t.throwsAsync(store.insertTokens([token({ id: 'tok_same' }), token({ id: 'tok_same' })]));
    t.true(isBrokerError(err, 'INTERNAL'));
    t.notRegex(`${err!.message} ${String((err as Error).cause)}`, /insert into|values|tok_same/i);
  });
});

test('ok/findDeviceWithLatestCertificate agrees with findDevice and latestCertificateOfDevice', async (t) => {
  await withStore(async (store) => {
    const d = device({ name: 'kiosk', labels: { site: 'hall' } });
    await store.insertDevice(d);
    await store.allocatePortBlock(d.id, POOL, T0);
    const both = async () => [await store.findDevice(d.id), await store.latestCertificateOfDevice(d.id)];
    const combined = async () => {
      const found = await store.findDeviceWithLatestCertificate(d.id);
      return [found?.device ?? null, found?.latest ?? null];
    };
    t.deepEqual(await combined(), await both());
    t.is((await combined())[1], null);
    const cert = (serial: bigint, kind: 'device' | 'operator', validBefore: Date) => ({
      serial, deviceId: d.id, kind, keyFingerprint: d.keyFingerprint, keyId: `device:${d.id}`,
      principal: 'ports-20000-20001', validAfter: T0, validBefore, issuedAt: T0,
    });
    await store.insertCertificate(cert(5n, 'device', at(HOUR)));
    await store.insertCertificate(cert(9n, 'device', at(2 * HOUR)));
    await store.insertCertificate(cert(12n, 'operator', at(3 * HOUR))); // not a device certificate
    await store.revokeCertificatesOfDevice(d.id, at(1));
    t.deepEqual(await combined(), await both());
    t.is(((await combined())[1] as { serial: bigint }).serial, 9n);
    t.is(await store.findDeviceWithLatestCertificate('dev_missing'), null);
  });
});
