/**
 * The rotation routes through a running broker (one node on SQLite): the
 * phases, their refusals with stable codes, the audit trail, the key files
 * of a commit in the data directory, admin keys only.
 */
import { readFile, stat } from 'node:fs/promises';
import test from 'ava';
import { ApiError, type ApiErrorCode, type RotationResponse, type RotationStatusResponse } from '../../../api/index.js';
import { fingerprint, loadKeyPair, loadPublicKey, parseCertificateLine } from '../../../ca/index.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';

async function refused(t: import('ava').ExecutionContext, call: Promise<unknown>, code: ApiErrorCode, status: number): Promise<void> {
  const err = await t.throwsAsync(call, { instanceOf: ApiError });
  t.is(err?.code, code);
  t.is(err?.status, status);
}

const status = (b: TestBroker) => b.call<RotationStatusResponse>(b.admin, 'GET', '/v1/rotations/current');

test('ok/user-ca: start (a single node moves to learn at once), status, commit: the new CA on disk, the old kept as .retired-<id>, audited', async (t) => {
  await withBroker(async (b) => {
    const paths = dataPaths(b.dir);
    const before = fingerprint(await loadPublicKey(`${paths.userCa}.pub`));
    await refused(t, status(b), 'ROTATION_NOT_FOUND', 404);
    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
    t.like(started.rotation, { root: 'user-ca', from: before, outcome: null, finishedAt: null });
    t.not(started.rotation.next, before);
    const s = await status(b);
    t.like(s, { rotation: { id: started.rotation.id, phase: 'learn' }, nodes: { acked: 1, up: 1, lagging: [] }, devices: { active: 0, learned: 0, lagging: [], laggingNotListed: 0 } });
    const snapshot = b.broker.core.trustRoots.current();
    t.deepEqual(snapshot.rotation, { id: started.rotation.id, root: 'user-ca', phase: 'learn' });
    t.is(snapshot.acceptedUserCas.length, 2);
    t.is(fingerprint(snapshot.signingUserCa.publicKey), started.rotation.next);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations', { root: 'host-key' }), 'ROTATION_IN_PROGRESS', 409);
    const metrics = (await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString();
    t.regex(metrics, /certunnel_rotation_phase\{root="user-ca",phase="learn"\} 1/);
    t.regex(metrics, /certunnel_rotation_phase\{root="user-ca",phase="prepare"\} 0/);
    t.regex(metrics, /certunnel_rotation_phase\{root="host-key",phase="learn"\} 0/);
    t.regex(metrics, /certunnel_rotation_devices\{state="lagging"\} 0/);

    const done = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations/current/commit', {});
    t.like(done.rotation, { outcome: 'committed', phase: 'learn' });
    t.is(fingerprint((await loadKeyPair(paths.userCa)).publicKey), started.rotation.next);
    t.is(fingerprint(await loadPublicKey(`${paths.userCa}.pub`)), started.rotation.next);
    t.is(fingerprint((await loadKeyPair(`${paths.userCa}.retired-${started.rotation.id}`)).publicKey), before);
    t.is((await stat(paths.userCa)).mode & 0o777, 0o600);
    t.is((await stat(`${paths.userCa}.retired-${started.rotation.id}`)).mode & 0o777, 0o600);
    const after = b.broker.core.trustRoots.current();
    t.is(after.rotation, null);
    t.deepEqual(after.acceptedUserCas.map((k) => fingerprint(k)), [started.rotation.next]);
    await refused(t, status(b), 'ROTATION_NOT_FOUND', 404);
    t.notRegex((await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString(), /certunnel_rotation_phase\{[^}]*\} 1/);

    const audit = await b.call<{ items: Array<{ action: string; actor: string; target: string }> }>(b.admin, 'GET', '/v1/audit?action=rotation.start');
    t.is(audit.items.length, 1);
    for (const action of ['rotation.learn', 'rotation.commit']) {
      const rows = await b.call<{ items: Array<{ target: string }> }>(b.admin, 'GET', `/v1/audit?action=${action}`);
      t.deepEqual(rows.items.map((e) => e.target), [`rotation:${started.rotation.id}`], action);
    }
    t.false(b.logs.some((l) => l.includes('OPENSSH PRIVATE KEY')), 'no key in the logs');
  });
});

test('ok/rollback from learn: the old CA alone, signing and on disk; a second rollback ROTATION_NOT_FOUND', async (t) => {
  await withBroker(async (b) => {
    const paths = dataPaths(b.dir);
    const before = await readFile(paths.userCa, 'utf8');
    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
    const rolled = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations/current/rollback');
    t.like(rolled.rotation, { id: started.rotation.id, outcome: 'rolled_back' });
    const snapshot = b.broker.core.trustRoots.current();
    t.is(snapshot.rotation, null);
    t.deepEqual(snapshot.acceptedUserCas.map((k) => fingerprint(k)), [started.rotation.from]);
    t.is(fingerprint(snapshot.signingUserCa.publicKey), started.rotation.from);
    t.is(await readFile(paths.userCa, 'utf8'), before);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations/current/rollback'), 'ROTATION_NOT_FOUND', 404);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations/current/commit', {}), 'ROTATION_NOT_FOUND', 404);
  });
});

test('fail/bad input and roles: BAD_REQUEST, FORBIDDEN, nothing started', async (t) => {
  await withBroker(async (b) => {
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations', { root: 'everything' }), 'BAD_REQUEST', 400);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations', { root: 'user-ca', extra: 1 }), 'BAD_REQUEST', 400);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations', {}), 'BAD_REQUEST', 400);
    for (const role of ['operator', 'provisioner'] as const) {
      const key = await b.apiKey(role);
      await refused(t, b.call(key, 'POST', '/v1/rotations', { root: 'user-ca' }), 'FORBIDDEN', 403);
      await refused(t, b.call(key, 'GET', '/v1/rotations/current'), 'FORBIDDEN', 403);
    }
    await refused(t, b.call(b.anonymous, 'POST', '/v1/rotations', { root: 'user-ca' }), 'UNAUTHENTICATED', 401);
    t.is(await b.broker.store.activeRotation(), null);
  });
});

test('ok/api-tls: learn serves the next identity too and pins both; commit writes the new key, certificate and pin', async (t) => {
  await withBroker(async (b) => {
    const paths = dataPaths(b.dir);
    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'api-tls' });
    t.is(started.rotation.from, b.init.apiPin);
    const learn = b.broker.core.trustRoots.current();
    t.deepEqual(learn.trust.apiPins, [b.init.apiPin, started.rotation.next]);
    t.deepEqual(learn.otherTls.map((x) => x.pin), [started.rotation.next]);
    await b.call(b.admin, 'POST', '/v1/rotations/current/commit', {});
    t.is((await readFile(paths.apiPin, 'utf8')).trim(), started.rotation.next);
    t.is((await stat(paths.tlsKey)).mode & 0o777, 0o600);
    t.is((await readFile(`${paths.apiPin}.retired-${started.rotation.id}`, 'utf8')).trim(), b.init.apiPin);
    const after = b.broker.core.trustRoots.current();
    t.is(after.tls?.pin, started.rotation.next);
    t.deepEqual(after.otherTls, []);
  });
});

test('fail/api-tls when the broker does not serve TLS itself: ROTATION_UNSUPPORTED, nothing started', async (t) => {
  await withBroker(
    async (b) => {
      await refused(t, b.call(b.admin, 'POST', '/v1/rotations', { root: 'api-tls' }), 'ROTATION_UNSUPPORTED', 409);
      t.is(await b.broker.store.activeRotation(), null);
    },
    { config: { api: { insecureHttp: true } } },
  );
});

test('ok/host-key and host-ca: learn lists both in the trust set; commit presents the next, its certificate signed by the right CA', async (t) => {
  await withBroker(async (b) => {
    const paths = dataPaths(b.dir);
    const hk = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'host-key' });
    t.is(b.broker.core.trustRoots.current().trust.hostKeys.length, 2);
    await b.call(b.admin, 'POST', '/v1/rotations/current/commit', {});
    t.is(fingerprint((await loadKeyPair(paths.hostKey)).publicKey), hk.rotation.next);
    t.is(fingerprint(b.broker.core.trustRoots.current().hostKey.publicKey), hk.rotation.next);
    const hostCert = parseCertificateLine(await readFile(paths.hostCert, 'utf8'));
    t.is(fingerprint(hostCert.publicKey), hk.rotation.next, 'the host certificate is of the next host key');
    t.is(fingerprint(hostCert.signatureKey), fingerprint(await loadPublicKey(`${paths.hostCa}.pub`)), 'signed by the current host CA');
    const hc = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'host-ca' });
    t.is(b.broker.core.trustRoots.current().trust.hostCertificateAuthorities.length, 2);
    await b.call(b.admin, 'POST', '/v1/rotations/current/commit', {});
    const now = b.broker.core.trustRoots.current();
    t.is(fingerprint(now.hostCa), hc.rotation.next);
    t.deepEqual(now.trust.hostKeys.length, 1);
    const recert = parseCertificateLine(now.hostCertificate);
    t.is(fingerprint(recert.signatureKey), hc.rotation.next, 'the host certificate is signed by the next host CA');
    t.is(fingerprint(recert.publicKey), hk.rotation.next, 'of the host key as it is');
    t.true((await stat(`${paths.hostCa}.retired-${hc.rotation.id}`)).isFile());
  });
});
