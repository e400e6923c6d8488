/**
 * A user CA rotation through a running broker (issue #14, docs/rotation.md),
 * with the real `ssh` client and, in OpenSSH mode, a real sshd as referees:
 * start → learn → a device renews and gets a certificate of the next CA
 * (`ssh-keygen -L` says so) → tunnels with certificates of both CAs get in
 * → commit → the old CA's are refused, the new CA's get in; a device that
 * slept through the rotation renews with its device key and is back.
 * Rollback from learn leaves the old CA signing and alone accepted; commit
 * before learn and with lagging devices are refused with their codes.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import test from 'ava';
import { ApiError, type ApiErrorCode, type RenewResponse, type RotationResponse, type RotationStatusResponse } from '../../../api/index.js';
import { fingerprint, formatPublicKey, loadKeyPair, parseCertificateLine } from '../../../ca/index.js';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { OPENSSH_FILES } from '../../../broker/openssh/config-files.js';
import { loadConfig } from '../../../broker/compose/load-config.js';
import { startBroker } from '../../../broker/compose/start.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice, openDeviceTunnel, startBrokerSshd, type TestDevice } from '../../../testkit/device-tunnel.js';
import { isListening, startDeviceService } from '../../../testkit/gateway.js';
import { sshKeygen, sshKeygenOk } from '../../../testkit/openssh.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { waitFor, writeClientIdentity } from '../../../testkit/ssh-client.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;

/** Renews DEVICE with its own key (no key change), as an agent that stores trust sets; its certificate files are rewritten. */
async function renewTestDevice(b: TestBroker, device: TestDevice, name: string): Promise<TestDevice> {
  const grant = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', { ...buildRenewRequest({ deviceId: device.id, key: device.key }), capabilities: ['trust-set-v1'] });
  const identity = await writeClientIdentity(b.dir, name, device.key, parseCertificateLine(grant.certificate));
  return { ...device, grant, identity };
}

/** The signing CA's fingerprint as `ssh-keygen -L` prints it. */
async function signingCaOf(certPath: string): Promise<string> {
  const { stdout } = await sshKeygenOk(['-L', '-f', certPath]);
  const m = /Signing CA: ED25519 (SHA256:\S+)/.exec(stdout);
  if (!m) throw new Error(`no signing CA in ssh-keygen -L: ${stdout}`);
  return m[1]!;
}

async function refused(t: import('ava').ExecutionContext, call: Promise<unknown>, code: ApiErrorCode): Promise<string> {
  const err = await t.throwsAsync(call, { instanceOf: ApiError });
  t.is(err?.code, code);
  return err?.message ?? '';
}

/** Whether DEVICE gets its tunnel up through the SSH server on PORT; the tunnel is closed again. */
async function tunnels(device: TestDevice, port: number, servicePort: number): Promise<boolean> {
  try {
    const ssh = await connectDevice(device, port, servicePort);
    await ssh.stop();
    return true;
  } catch {
    return false;
  }
}

/** A login DEVICE must not get: ssh exits non-zero and nothing listens on its port. */
async function loginRefused(device: TestDevice, port: number, servicePort: number): Promise<boolean> {
  const ssh = await openDeviceTunnel(device, port, servicePort);
  const code = await ssh.exited;
  return code !== 0 && !(await isListening(device.port));
}

/** Whether `ssh-keygen -Q` says the KRL at PATH revokes the certificate at CERTPATH. */
async function krlRevokes(path: string, certPath: string): Promise<boolean> {
  const r = await sshKeygen(['-Q', '-f', path, certPath]);
  return r.code !== 0 && /REVOKED/.test(r.stdout);
}

/** The whole rotation against the SSH server on sshPort() (the gateway, or an sshd reading OpenSSH mode's files). */
async function rotateThrough(t: import('ava').ExecutionContext, b: TestBroker, sshPort: number, tag: string): Promise<void> {
  const service = await startDeviceService('device\n');
  try {
    const sleeper = await enrollTestDevice(b, `${tag}-sleeper`);
    const stays = await enrollTestDevice(b, `${tag}-old`);
    const renewing = await enrollTestDevice(b, `${tag}-renews`);
    const oldCa = fingerprint(b.broker.core.trustRoots.current().signingUserCa.publicKey);
    t.is(await signingCaOf(stays.identity.certPath!), oldCa);

    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
    const nextCa = started.rotation.next;
    const status = await b.call<RotationStatusResponse>(b.admin, 'GET', '/v1/rotations/current');
    t.like(status, { rotation: { phase: 'learn' }, devices: { active: 3, learned: 0, laggingNotListed: 0 } });
    t.is(status.devices.lagging.length, 3);

    const renewed = await renewTestDevice(b, renewing, `${tag}-renews-next`);
    t.is(await signingCaOf(renewed.identity.certPath!), nextCa, 'ssh-keygen -L: signed by the next CA');
    const record = await b.broker.store.findCertificate(BigInt(renewed.grant.serial));
    t.like(record, { signedBy: nextCa, trustRotation: started.rotation.id });
    // An agent that does not say it stores trust sets is signed by the next CA too, but not counted as having learned the trust.
    const plain = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: renewed.id, key: renewed.key }));
    t.like(await b.broker.store.findCertificate(BigInt(plain.serial)), { signedBy: nextCa, trustRotation: null });
    t.true(await tunnels(stays, sshPort, service.port), 'a certificate of the current CA gets in during learn');
    t.true(await tunnels(renewed, sshPort, service.port), 'a certificate of the next CA gets in during learn');

    // The KRL has a section per CA: revoking a device revokes its certificates of either.
    const krl = b.broker.core.config.ssh.mode === 'openssh' ? join(b.dir, b.broker.core.config.ssh.opensshDir, OPENSSH_FILES.krl) : dataPaths(b.dir).krl;
    const doomed = await renewTestDevice(b, await enrollTestDevice(b, `${tag}-doomed`), `${tag}-doomed-next`);
    await b.call(b.admin, 'POST', `/v1/devices/${doomed.id}/revoke`, {});
    t.true(await krlRevokes(krl, doomed.identity.certPath!), 'the next CA section revokes');

    const metrics = (await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString();
    t.regex(metrics, /certunnel_rotation_devices\{state="learned"\} 1/);
    t.regex(metrics, /certunnel_rotation_devices\{state="lagging"\} 2/);
    const lagging = await refused(t, b.call(b.admin, 'POST', '/v1/rotations/current/commit', {}), 'ROTATION_DEVICES_LAGGING');
    t.regex(lagging, /^2 of 3 active devices/);
    // A live session of the retired CA ends at commit (the gateway knows the CA; for sshd, the device never had a certificate of the new one).
    const live = await connectDevice(stays, sshPort, service.port);
    const liveNext = await connectDevice(renewed, sshPort, service.port);
    const forced = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations/current/commit', { force: true });
    t.is(forced.rotation.outcome, 'forced');
    await waitFor(async () => !(await isListening(stays.port)), 'the retired CA session to end', 20_000);
    t.not(await live.exited, 0);
    await waitFor(() => b.logs.some((l) => l.includes('ended the sessions of a retired user CA')), 'the log line', 20_000);
    t.true(await isListening(renewed.port), 'the session of the new CA stays up');
    await liveNext.stop();
    t.deepEqual(b.broker.core.trustRoots.current().acceptedUserCas.map((k) => fingerprint(k)), [nextCa]);

    t.true(await loginRefused(stays, sshPort, service.port), 'a certificate of the retired CA is refused after commit');
    t.true(await tunnels(renewed, sshPort, service.port), 'a certificate of the new CA gets in after commit');
    // Offline for the whole rotation: its certificate is refused, its device key renews it.
    t.true(await loginRefused(sleeper, sshPort, service.port));
    const back = await renewTestDevice(b, sleeper, `${tag}-sleeper-next`);
    t.is(await signingCaOf(back.identity.certPath!), nextCa);
    t.true(await tunnels(back, sshPort, service.port), 'the device that slept through the rotation is back after renewing');
  } finally {
    await service.close();
  }
}

test('ok/user-ca rotation through the embedded gateway: both CAs during learn, the new alone after commit', async (t) => {
  await withBroker(async (b) => {
    await rotateThrough(t, b, b.broker.sshPort, 'emb');
  });
});

sshdTest('ok/user-ca rotation through OpenSSH mode: TrustedUserCAKeys lists both CAs during learn, the new alone after commit (no sshd reload)', async (t) => {
  await withBroker(
    async (b) => {
      const sshd = await startBrokerSshd(b);
      try {
        const file = join(b.dir, b.broker.core.config.ssh.opensshDir, OPENSSH_FILES.userCa);
        t.is((await readFile(file, 'utf8')).trim().split('\n').length, 1);
        await rotateThrough(t, b, sshd.port, 'ossh');
        const lines = (await readFile(file, 'utf8')).trim().split('\n');
        t.deepEqual(lines, [formatPublicKey(b.broker.core.trustRoots.current().signingUserCa.publicKey, 'certunnel-user-ca')]);
      } finally {
        await sshd.stop();
      }
    },
    { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0' } } },
  );
});

test('ok/rollback from learn: the old CA signs again and alone logs in; a certificate of the dropped CA is refused', async (t) => {
  await withBroker(async (b) => {
    const service = await startDeviceService('device\n');
    try {
      const device = await enrollTestDevice(b, 'rb');
      const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
      const ofNext = await renewTestDevice(b, device, 'rb-next');
      t.is(await signingCaOf(ofNext.identity.certPath!), started.rotation.next);
      await b.call(b.admin, 'POST', '/v1/rotations/current/rollback');
      t.true(await loginRefused(ofNext, b.broker.sshPort, service.port), 'the dropped CA is no longer accepted');
      const again = await renewTestDevice(b, device, 'rb-again');
      t.is(await signingCaOf(again.identity.certPath!), started.rotation.from, 'the old CA signs again');
      t.true(await tunnels(again, b.broker.sshPort, service.port));
    } finally {
      await service.close();
    }
  });
});

test('fail/commit in prepare (a node up that has not loaded the next key): ROTATION_NOT_READY; force commits anyway', async (t) => {
  await withBroker(async (b) => {
    // Another node, up (a fresh heartbeat) and silent: it never acks.
    await b.broker.store.registerNode({
      id: 'node_aaaaaaaaaaaaaaaa', name: 'silent', sshEndpoint: '127.0.0.1:1', apiUrl: null, internalAddress: null, relayKey: null, version: 'test', startedAt: b.clock.now(),
    });
    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
    const status = await b.call<RotationStatusResponse>(b.admin, 'GET', '/v1/rotations/current');
    t.like(status, { rotation: { phase: 'prepare' }, nodes: { acked: 1, up: 2, lagging: ['node_aaaaaaaaaaaaaaaa'] } });
    // prepare: both accepted, the current one still signs.
    const snapshot = b.broker.core.trustRoots.current();
    t.is(snapshot.acceptedUserCas.length, 2);
    t.is(fingerprint(snapshot.signingUserCa.publicKey), started.rotation.from);
    await refused(t, b.call(b.admin, 'POST', '/v1/rotations/current/commit', {}), 'ROTATION_NOT_READY');
    t.is((await b.broker.store.activeRotation())?.id, started.rotation.id, 'nothing changed');
    const forced = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations/current/commit', { force: true });
    t.like(forced.rotation, { outcome: 'forced', phase: 'prepare' });
    t.is(fingerprint(b.broker.core.trustRoots.current().signingUserCa.publicKey), started.rotation.next);
  });
});

test('ok/a node that was down during a commit applies it at its start: the new CA on disk and signing, the old kept once', async (t) => {
  await withBroker(async (b) => {
    const paths = dataPaths(b.dir);
    const oldKey = await readFile(paths.userCa);
    const oldPub = await readFile(`${paths.userCa}.pub`);
    const started = await b.call<RotationResponse>(b.admin, 'POST', '/v1/rotations', { root: 'user-ca' });
    await b.call(b.admin, 'POST', '/v1/rotations/current/commit', {});
    await b.broker.close();
    // As if this node had been down: its data directory still holds the old CA.
    await writeFile(paths.userCa, oldKey, { mode: 0o600 });
    await writeFile(`${paths.userCa}.pub`, oldPub);
    const logger = createLogger('warn', new Writable({ write: (_c, _e, cb) => cb() }));
    const again = await startBroker({ config: await loadConfig({ dataDir: b.dir }), logger, clock: b.clock.now });
    try {
      t.is(fingerprint(again.core.trustRoots.current().signingUserCa.publicKey), started.rotation.next);
      t.is(fingerprint((await loadKeyPair(paths.userCa)).publicKey), started.rotation.next);
      t.deepEqual(await readFile(`${paths.userCa}.retired-${started.rotation.id}`), oldKey, 'the retired copy is the old key');
      const device = await enrollTestDevice({ ...b, broker: again, admin: { ...b.admin, baseUrl: again.apiUrl }, anonymous: { ...b.anonymous, baseUrl: again.apiUrl } }, 'after');
      t.is(fingerprint(parseCertificateLine(device.grant.certificate).signatureKey), started.rotation.next);
    } finally {
      await again.close();
    }
  });
});
