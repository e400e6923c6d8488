/**
 * Revocation cannot fail open (issue 12 item 2; DESIGN "Revocation does not
 * depend on I/O succeeding"), against a real broker, a real SQLite file,
 * the real `ssh` client and, in OpenSSH mode, a real sshd. The KRL write
 * failure is injected from outside as a disk would cause it: a directory
 * stands where the KRL file goes, so the atomic rename over it fails
 * (EISDIR) until the test removes it (as root, a read-only directory
 * would not stop the broker).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { HealthResponse } from '../../../api/index.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice, openDeviceTunnel, startBrokerSshd, type TestDevice } from '../../../testkit/device-tunnel.js';
import { isListening, startDeviceService } from '../../../testkit/gateway.js';
import { sshKeygen } from '../../../testkit/openssh.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { OPENSSH_FILES } from '../../../broker/openssh/config-files.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;

/** Outcome bounds: generous for a loaded 2-core machine; nothing here measures latency. */
const CLOSE_DEADLINE_MS = 10_000;

/** Makes every write of the KRL at PATH fail: a non-empty directory stands where the file goes. */
async function breakKrlWrites(path: string): Promise<() => Promise<void>> {
  await rm(path, { force: true });
  await mkdir(path);
  await writeFile(join(path, 'in-the-way'), '');
  return () => rm(path, { recursive: true, force: true });
}

/** Whether `ssh-keygen -Q` says the KRL at PATH revokes the certificate at CERTPATH. */
async function krlRevokes(path: string, certPath: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  const r = await sshKeygen(['-Q', '-f', path, certPath]);
  return r.code !== 0 && /REVOKED/.test(r.stdout);
}

async function health(b: TestBroker): Promise<HealthResponse> {
  return b.call<HealthResponse>(b.anonymous, 'GET', '/healthz');
}

/** A fresh login of DEVICE that must not get its port: ssh exits non-zero and nothing listens. */
async function assertLoginRefused(t: { true(v: boolean, m?: string): void; not(a: unknown, b: unknown, m?: string): void }, device: TestDevice, sshPort: number, servicePort: number): Promise<void> {
  const again = await openDeviceTunnel(device, sshPort, servicePort);
  t.not(await again.exited, 0, 'the revoked device cannot log in and bind');
  t.true(!(await isListening(device.port)), 'nothing listens on the revoked device port');
}

test('fail/krl-write-failure (embedded): the revoked device is denied and its tunnel closed; the KRL catches up, /healthz recovers', async (t) => {
  await withBroker(async (b) => {
    const service = await startDeviceService('device\n');
    const device = await enrollTestDevice(b, 'kiosk-krl');
    const ssh = await connectDevice(device, b.broker.sshPort, service.port);
    const restore = await breakKrlWrites(dataPaths(b.dir).krl);
    try {
      const revoked = await b.call<{ alreadyRevoked: boolean }>(b.admin, 'POST', `/v1/devices/${device.id}/revoke`, { reason: 'stolen' });
      t.false(revoked.alreadyRevoked);
      await waitFor(async () => !(await isListening(device.port)), 'the live tunnel to close', CLOSE_DEADLINE_MS);
      t.not(await ssh.exited, 0);
      await assertLoginRefused(t, device, b.broker.sshPort, service.port);

      // Loud: /healthz, the metrics and the log say the KRL is stale.
      t.deepEqual(await health(b), { status: 'degraded', problems: ['KRL_WRITE_FAILING'] });
      const metrics = (await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString();
      t.regex(metrics, /certunnel_krl_stale 1/);
      t.regex(metrics, /certunnel_krl_write_failures [1-9]/);
      t.true(b.logs.some((l) => l.includes('KRL write failed')));
      // Re-revoking says so, and re-applies the effects (nothing is live to close now).
      t.true((await b.call<{ alreadyRevoked: boolean }>(b.admin, 'POST', `/v1/devices/${device.id}/revoke`, {})).alreadyRevoked);

      await restore();
      await waitFor(() => krlRevokes(dataPaths(b.dir).krl, device.identity.certPath!), 'the KRL to be written with the device', CLOSE_DEADLINE_MS);
      await waitFor(async () => (await health(b)).status === 'ok', '/healthz to recover', CLOSE_DEADLINE_MS);
      t.regex((await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString(), /certunnel_krl_stale 0/);
    } finally {
      await restore();
      await ssh.stop();
      await service.close();
    }
  });
});

test('fail/lost-hook (embedded): re-revoking a device the store already says is revoked closes its live tunnel', async (t) => {
  await withBroker(
    async (b) => {
      const service = await startDeviceService('device\n');
      const device = await enrollTestDevice(b, 'kiosk-rerevoke');
      const ssh = await connectDevice(device, b.broker.sshPort, service.port);
      try {
        // The commit happened, the effects did not (a crash, or another node's revocation).
        t.true(await b.broker.store.transaction((tx) => tx.markDeviceRevoked(device.id, 'test', 'lost hook', new Date())));
        t.true(await isListening(device.port), 'control: the tunnel is still up');
        t.true((await b.call<{ alreadyRevoked: boolean }>(b.admin, 'POST', `/v1/devices/${device.id}/revoke`, {})).alreadyRevoked);
        await waitFor(async () => !(await isListening(device.port)), 'the re-revocation to close the tunnel', CLOSE_DEADLINE_MS);
        await assertLoginRefused(t, device, b.broker.sshPort, service.port);
      } finally {
        await ssh.stop();
        await service.close();
      }
    },
    { config: { ssh: { reconcileSeconds: 3600 } } }, // not the reconciliation: the re-revocation
  );
});

test('fail/lost-hook (embedded): the reconciliation ends a live session whose device the store says is revoked', async (t) => {
  await withBroker(
    async (b) => {
      const service = await startDeviceService('device\n');
      const device = await enrollTestDevice(b, 'kiosk-reconcile');
      const ssh = await connectDevice(device, b.broker.sshPort, service.port);
      try {
        await b.broker.store.transaction(async (tx) => {
          await tx.markDeviceRevoked(device.id, 'test', 'lost hook', new Date());
          await tx.revokeCertificatesOfDevice(device.id, new Date());
        });
        await waitFor(async () => !(await isListening(device.port)), 'the reconciliation to close the tunnel', CLOSE_DEADLINE_MS);
        t.not(await ssh.exited, 0);
        await assertLoginRefused(t, device, b.broker.sshPort, service.port);
        t.true(b.logs.some((l) => l.includes('reconciliation ended live sessions')));
      } finally {
        await ssh.stop();
        await service.close();
      }
    },
    { config: { ssh: { reconcileSeconds: 1 } } },
  );
});

sshdTest('fail/krl-write-failure (openssh): a revoked device that gets in through the stale KRL is ended by the reconciliation', async (t) => {
  await withBroker(
    async (b) => {
      const sshd = await startBrokerSshd(b);
      const service = await startDeviceService('device\n');
      const device = await enrollTestDevice(b, 'kiosk-krl-openssh');
      const sshdKrl = join(b.dir, b.broker.core.config.ssh.opensshDir, OPENSSH_FILES.krl);
      const ssh = await connectDevice(device, sshd.port, service.port);
      // The broker's KRL is written first: while it fails, the copy sshd reads stays as it was (a full
      // disk fails both; a missing KRL would make sshd refuse every key, which is not the danger).
      const restoreBroker = await breakKrlWrites(dataPaths(b.dir).krl);
      try {
        await b.call(b.admin, 'POST', `/v1/devices/${device.id}/revoke`, {});
        await waitFor(async () => !(await isListening(device.port)), 'the live sshd session to end', CLOSE_DEADLINE_MS);
        t.not(await ssh.exited, 0);
        t.false(await krlRevokes(sshdKrl, device.identity.certPath!), 'control: the KRL sshd reads is stale');
        t.true((await health(b)).problems?.includes('KRL_WRITE_FAILING'));

        // sshd lets the revoked device in (its KRL is stale): the reconciliation ends that session.
        const back = await openDeviceTunnel(device, sshd.port, service.port);
        const exited = await Promise.race([back.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), CLOSE_DEADLINE_MS * 2))]);
        t.not(exited, 'timeout', 'the revoked device session through the stale KRL was ended');
        t.false(await isListening(device.port));
        t.true(b.logs.some((l) => l.includes('"why":"reconciliation"')), 'ended by the reconciliation');

        await restoreBroker();
        await waitFor(() => krlRevokes(sshdKrl, device.identity.certPath!), 'the KRL sshd reads to list the device', CLOSE_DEADLINE_MS);
        // Recovered from the KRL failure (this test's sshd is not the one at ssh.sshdConfig, so SSHD_PORT_MISMATCH may stay).
        await waitFor(async () => !(await health(b)).problems?.includes('KRL_WRITE_FAILING'), '/healthz to recover', CLOSE_DEADLINE_MS);
        const refused = await openDeviceTunnel(device, sshd.port, service.port);
        t.not(await refused.exited, 0);
        t.regex(refused.stderr(), /Permission denied/, 'sshd itself refuses it now');
      } finally {
        await restoreBroker();
        await ssh.stop();
        await sshd.stop();
        await service.close();
      }
    },
    { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0', reconcileSeconds: 1 } } },
  );
});
