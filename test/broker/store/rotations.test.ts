/** Trust rotations (broker/store/rotations.ts, migration 005), on both backends. */
import { BrokerError } from '../../../broker/core/errors.js';
import { HOUR, T0, at, device, test, withStore } from './fixtures.js';
import type { NewTrustRotation, StoreTx } from '../../../broker/store/index.js';

const rotation = (over: Partial<NewTrustRotation> = {}): NewTrustRotation => ({
  root: 'user-ca', nextSealed: 'v1.sealed', fromFingerprint: 'SHA256:old', nextFingerprint: 'SHA256:new', startedAt: T0, startedBy: 'apikey:a', ...over,
});

const node = (id: string) => ({
  id, name: id, sshEndpoint: `${id}.example:2222`, apiUrl: null, internalAddress: null, relayKey: null, version: '0.5.0', startedAt: T0,
});

test('ok/start, phases by compare-and-swap, finish; one active at a time; history newest first', async (t) => {
  await withStore(async (store) => {
    t.is(await store.activeRotation(), null);
    const r = await store.startRotation(rotation());
    t.like(r, { root: 'user-ca', phase: 'prepare', learnAt: null, finishedAt: null, outcome: null, nextFingerprint: 'SHA256:new' });
    t.deepEqual(await store.activeRotation(), r);
    const second = await t.throwsAsync(store.startRotation(rotation({ root: 'host-key' })), { instanceOf: BrokerError });
    t.is((second as BrokerError).code, 'ROTATION_IN_PROGRESS');
    t.false(await store.setRotationPhase(r.id, 'learn', 'prepare', at(1)), 'not in learn');
    t.true(await store.setRotationPhase(r.id, 'prepare', 'learn', at(2)));
    t.false(await store.setRotationPhase(r.id, 'prepare', 'learn', at(3)), 'once');
    t.like(await store.findRotation(r.id), { phase: 'learn', learnAt: at(2) });
    t.true(await store.finishRotation(r.id, 'committed', 'apikey:b', at(4)));
    t.false(await store.finishRotation(r.id, 'rolled_back', 'apikey:c', at(5)), 'finished once');
    t.false(await store.setRotationPhase(r.id, 'learn', 'prepare', at(6)), 'a finished rotation keeps its phase');
    t.is(await store.activeRotation(), null);
    t.like(await store.findRotation(r.id), { outcome: 'committed', finishedBy: 'apikey:b', finishedAt: at(4), phase: 'learn' });
    const next = await store.startRotation(rotation({ root: 'api-tls', startedAt: at(10) }));
    t.true(next.id > r.id);
    t.deepEqual((await store.listRotations(10)).map((x) => x.id), [next.id, r.id]);
    t.deepEqual((await store.listRotations(1)).map((x) => x.id), [next.id]);
    t.is(await store.findRotation(9999), null);
  });
});

test('ok/ten starts at once: exactly one rotation is active', async (t) => {
  await withStore(async (store) => {
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => store.startRotation(rotation())));
    t.is(results.filter((r) => r.status === 'fulfilled').length, 1);
    for (const r of results) if (r.status === 'rejected') t.is((r.reason as BrokerError).code, 'ROTATION_IN_PROGRESS');
  });
});

test('ok/nodes ack a rotation; an unknown node is not', async (t) => {
  await withStore(async (store) => {
    await store.registerNode(node('node_a'));
    const r = await store.startRotation(rotation());
    t.is((await store.findNode('node_a'))?.rotationAck, null);
    t.true(await store.ackRotation('node_a', r.id));
    t.false(await store.ackRotation('node_zz', r.id));
    t.is((await store.findNode('node_a'))?.rotationAck, r.id);
    // A restart keeps what the node loaded (the rotation is still in the store).
    await store.registerNode(node('node_a'));
    t.is((await store.listNodes())[0]?.rotationAck, r.id);
  });
});

async function issue(tx: StoreTx, deviceId: string, over: { issuedAt?: Date; signedBy?: string | null; trustRotation?: number | null } = {}): Promise<bigint> {
  const serial = await tx.nextSerial();
  await tx.insertCertificate({
    serial, deviceId, kind: 'device', keyFingerprint: 'SHA256:k', keyId: `device:${deviceId}`, principal: 'ports-1-2',
    validAfter: T0, validBefore: at(HOUR), issuedAt: over.issuedAt ?? T0, signedBy: over.signedBy ?? null, trustRotation: over.trustRotation ?? null,
  });
  return serial;
}

test('ok/certificates record their signer and rotation; devices counted learned/lagging among the active ones', async (t) => {
  await withStore(async (store) => {
    const r = await store.startRotation(rotation());
    const [learnedBySigner, learnedByTrust, lagging, old, revoked] = ['a', 'b', 'c', 'd', 'e'].map((n) => device({ id: `dev_${n}`, name: `n-${n}` }));
    for (const d of [learnedBySigner!, learnedByTrust!, lagging!, old!, revoked!]) await store.insertDevice(d);
    const serial = await store.transaction((tx) => issue(tx, learnedBySigner!.id, { issuedAt: at(10 * HOUR), signedBy: 'SHA256:new' }));
    t.like(await store.findCertificate(serial), { signedBy: 'SHA256:new', trustRotation: null });
    await store.transaction((tx) => issue(tx, learnedByTrust!.id, { issuedAt: at(10 * HOUR), signedBy: 'SHA256:old', trustRotation: r.id }));
    await store.transaction((tx) => issue(tx, lagging!.id, { issuedAt: at(10 * HOUR), signedBy: 'SHA256:old' }));
    await store.setDeviceOnline(lagging!.id, { online: false, since: null, remoteAddr: null, lastSeen: at(11 * HOUR) });
    // Seen and issued long ago: not active.
    await store.transaction((tx) => issue(tx, old!.id, { issuedAt: T0, signedBy: 'SHA256:old' }));
    await store.transaction((tx) => issue(tx, revoked!.id, { issuedAt: at(10 * HOUR), signedBy: 'SHA256:old' }));
    await store.markDeviceRevoked(revoked!.id, 'apikey:a', null, at(10 * HOUR));

    const counts = await store.rotationDeviceCounts({ rotationId: r.id, signedBy: 'SHA256:new', activeSince: at(5 * HOUR), limit: 10 });
    t.deepEqual(counts, { active: 3, learned: 2, lagging: [{ id: lagging!.id, name: 'n-c', lastSeenAt: at(11 * HOUR) }] });
    // Another root: the signer does not count.
    const other = await store.rotationDeviceCounts({ rotationId: r.id, signedBy: null, activeSince: at(5 * HOUR), limit: 0 });
    t.deepEqual(other, { active: 3, learned: 1, lagging: [] });
    const latest = await store.findDeviceWithLatestCertificate(learnedByTrust!.id);
    t.like(latest?.latest, { trustRotation: r.id, signedBy: 'SHA256:old' });
  });
});
