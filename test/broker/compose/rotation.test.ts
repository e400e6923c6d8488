/**
 * Key rotation (issue 12 item 10): a device that renews with a new key gives
 * the old one up, perhaps because it leaked. The old key's certificates are
 * revoked (KRL, checked with ssh-keygen -Q) and the session made with them
 * ends, while the device's new certificate logs in and stays up — in both
 * SSH modes, with the real ssh client (and a real sshd in OpenSSH mode).
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice, openDeviceTunnel, rotateTestDevice, startBrokerSshd } from '../../../testkit/device-tunnel.js';
import { isListening, startDeviceService } from '../../../testkit/gateway.js';
import { sshKeygen } from '../../../testkit/openssh.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { OPENSSH_FILES } from '../../../broker/openssh/config-files.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;
const DEADLINE_MS = 10_000;

/** ssh-keygen -Q's verdict on the certificate at CERTPATH against the KRL at KRLPATH. */
async function krlVerdict(krlPath: string, certPath: string): Promise<'revoked' | 'ok'> {
  const r = await sshKeygen(['-Q', '-f', krlPath, certPath]);
  return r.code !== 0 && /REVOKED/.test(r.stdout) ? 'revoked' : 'ok';
}

async function rotationScenario(t: ExecutionContext, b: TestBroker, sshPort: number, krlPath: string): Promise<void> {
  const service = await startDeviceService('device\n');
  const old = await enrollTestDevice(b, 'kiosk-rotate');
  const oldSession = await connectDevice(old, sshPort, service.port);
  let newSession: Awaited<ReturnType<typeof connectDevice>> | undefined;
  try {
    const rotated = await rotateTestDevice(b, old, 'kiosk-rotate-new');
    // The session made with the old key's certificate ends…
    t.not(await Promise.race([oldSession.exited, new Promise<string>((r) => setTimeout(() => r('still up'), DEADLINE_MS))]), 'still up');
    await waitFor(async () => !(await isListening(old.port)), 'the old session to let its port go', DEADLINE_MS);
    // …the old certificate is in the KRL and no longer logs in; the new one is not and does.
    await waitFor(async () => (await krlVerdict(krlPath, old.identity.certPath!)) === 'revoked', 'the KRL to list the old certificate', DEADLINE_MS);
    t.is(await krlVerdict(krlPath, rotated.identity.certPath!), 'ok');
    const replay = await openDeviceTunnel(old, sshPort, service.port);
    t.not(await replay.exited, 0, 'the old key certificate cannot log in again');
    newSession = await connectDevice(rotated, sshPort, service.port);
    // The new session outlives a few reconciliations (ssh.reconcileSeconds is 1 here).
    await new Promise((r) => setTimeout(r, 3000));
    t.true(await isListening(rotated.port), 'the new session is not cut off');
    t.is(newSession.child.exitCode, null);
  } finally {
    await newSession?.stop();
    await oldSession.stop();
    await service.close();
  }
}

test('fail/rotation (embedded): the old key certificate is revoked and its session ends; the new session stays', async (t) => {
  await withBroker((b) => rotationScenario(t, b, b.broker.sshPort, dataPaths(b.dir).krl), { config: { ssh: { reconcileSeconds: 1 } } });
});

sshdTest('fail/rotation (openssh): the old key certificate is revoked and its sshd session ends; the new session stays', async (t) => {
  await withBroker(
    async (b) => {
      const sshd = await startBrokerSshd(b);
      try {
        await rotationScenario(t, b, sshd.port, join(b.dir, b.broker.core.config.ssh.opensshDir, OPENSSH_FILES.krl));
      } finally {
        await sshd.stop();
      }
    },
    { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0', reconcileSeconds: 1 } } },
  );
});
