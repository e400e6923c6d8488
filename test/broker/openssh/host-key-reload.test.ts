/**
 * OpenSSH mode follows the presented host key (issue #14): on a host-key
 * rotation the broker writes new HostKey/HostCertificate files and reloads
 * a real sshd (SIGHUP through its pid file, after sshd -t): the tunnel that
 * was open stays up and carries traffic, ssh-keyscan shows the new key, a
 * device told the new key connects, the old key's files go. Without a
 * reload setting /healthz says SSHD_RELOAD_NEEDED until sshd serves the
 * key; a failing reload says SSHD_RELOAD_FAILED and is retried.
 * Needs Linux and root (sshd).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HealthResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';
import { connectDevice, enrollTestDevice, startBrokerSshd } from '../../../testkit/device-tunnel.js';
import { exchange, startDeviceService } from '../../../testkit/gateway.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { dataDirTrust, hostCertificateLine, hostKeyRotation, type SettableTrustRoots } from '../../../testkit/trust.js';
import type { RunningSshd } from '../../../testkit/sshd.js';
import type { TrustSnapshot } from '../../../broker/core/trust-roots.js';
import type { KeyPair } from '../../../ca/index.js';
import { scanHostKeys } from '../../../broker/openssh/sshd-reload.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;
const DEADLINE_MS = 20_000;

interface Rig {
  roots: SettableTrustRoots;
  initial: TrustSnapshot;
  hostCa: KeyPair;
  /** Where the broker's ssh.sshdConfig and ssh.sshdPidFile point (made to lead to the test sshd's once it runs). */
  sshdConfigLink: string;
  pidFile: string;
}

async function withOpensshBroker(reload: 'pid-file' | 'none', fn: (b: TestBroker, rig: Rig, sshd: RunningSshd) => Promise<void>): Promise<void> {
  const tag = randomBytes(6).toString('hex');
  const sshdConfigLink = join(tmpdir(), `certunnel-reload-${tag}.conf`);
  const pidFile = join(tmpdir(), `certunnel-reload-${tag}.pid`);
  let rig: Rig | undefined;
  try {
    await withBroker(async (b) => {
      const sshd = await startBrokerSshd(b, [`PidFile ${pidFile}`]);
      try {
        await symlink(join(sshd.dir, 'sshd_config'), sshdConfigLink);
        // sshd writes its pid file just after it says it listens.
        await waitFor(() => existsSync(pidFile), 'sshd to write its pid file', DEADLINE_MS);
        await fn(b, rig!, sshd);
      } finally {
        await sshd.stop();
      }
    }, {
      config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0', reconcileSeconds: 1, sshdConfig: sshdConfigLink, ...(reload === 'pid-file' ? { sshdPidFile: pidFile } : {}) } },
      trustRoots: async (dir) => {
        const trust = await dataDirTrust(dir);
        rig = { ...trust, sshdConfigLink, pidFile };
        return trust.roots;
      },
    });
  } finally {
    await rm(sshdConfigLink, { force: true });
    await rm(pidFile, { force: true });
  }
}

async function problems(b: TestBroker): Promise<readonly string[]> {
  return (await b.call<HealthResponse>(b.anonymous, 'GET', '/healthz')).problems ?? [];
}

async function served(sshd: RunningSshd): Promise<string[]> {
  return (await scanHostKeys('127.0.0.1', sshd.port))?.keys ?? [];
}

sshdTest('ok/host-key rotation with ssh.sshdPidFile: sshd reloaded (SIGHUP), the live tunnel survives, keyscan shows the new key', async (t) => {
  await withOpensshBroker('pid-file', async (b, rig, sshd) => {
    const service = await startDeviceService('hi ');
    const device = await enrollTestDevice(b, 'reload-1');
    const tunnel = await connectDevice(device, sshd.port, service.port);
    try {
      t.is((await exchange(device.port, 'before')).toString(), 'hi before');
      t.deepEqual(await served(sshd), [formatPublicKey(rig.initial.hostKey.publicKey)]);
      const outDir = join(b.dir, b.broker.core.config.ssh.opensshDir);
      const filesBefore = (await readdir(outDir)).filter((n) => n.startsWith('host_key-'));

      const rotation = hostKeyRotation(rig.initial, rig.hostCa);
      rig.roots.set(rotation.committed);
      const next = formatPublicKey(rotation.next.publicKey);
      await waitFor(async () => (await served(sshd)).includes(next), 'sshd to serve the new host key', DEADLINE_MS);
      t.regex(sshd.output(), /Received SIGHUP; restarting/);
      await waitFor(async () => (await problems(b)).every((p) => !p.startsWith('SSHD_RELOAD')), 'healthz without reload problems', DEADLINE_MS);

      // The tunnel opened before the reload: its sshd process lives on, still relaying.
      t.is(tunnel.child.exitCode, null);
      t.is((await exchange(device.port, 'after')).toString(), 'hi after');
      // A device told the new key (its grant) connects to the reloaded sshd.
      const second = await enrollTestDevice(b, 'reload-2');
      t.is(second.grant.ssh.hostKey, next);
      const secondTunnel = await connectDevice(second, sshd.port, service.port);
      await secondTunnel.stop();
      // The old key's files are gone once sshd serves the new one.
      await waitFor(async () => {
        const now = (await readdir(outDir)).filter((n) => n.startsWith('host_key-'));
        return now.length === 2 && now.every((n) => !filesBefore.includes(n));
      }, 'the old host key files to be removed', DEADLINE_MS);
      const config = await readFile(join(outDir, 'sshd_config.certunnel'), 'utf8');
      t.regex(config, /\nHostKey \S+\/host_key-[0-9a-f]{16}-[0-9a-f]{16}\n/);
    } finally {
      await tunnel.stop();
      await service.close();
    }
  });
});

sshdTest('ok/host-CA rotation with ssh.sshdPidFile: the same key, a certificate by the next CA, served after the reload', async (t) => {
  await withOpensshBroker('pid-file', async (b, rig, sshd) => {
    const nextCa = generateKeyPair();
    const certificate = hostCertificateLine(nextCa, rig.initial.hostKey);
    const certCore = certificate.split(' ').slice(0, 2).join(' ');
    t.false((await scanHostKeys('127.0.0.1', sshd.port))!.certificates.includes(certCore));
    rig.roots.set({ ...rig.initial, hostCa: nextCa.publicKey, hostCertificate: certificate, trust: { ...rig.initial.trust, hostCertificateAuthorities: [formatPublicKey(nextCa.publicKey)] } });
    await waitFor(async () => (await scanHostKeys('127.0.0.1', sshd.port))?.certificates.includes(certCore) ?? false, 'sshd to serve the new certificate', DEADLINE_MS);
    t.deepEqual(await served(sshd), [formatPublicKey(rig.initial.hostKey.publicKey)], 'the key is unchanged');
    await waitFor(async () => (await problems(b)).every((p) => !p.startsWith('SSHD_RELOAD')), 'healthz without reload problems', DEADLINE_MS);
  });
});

sshdTest('ok/no reload setting: SSHD_RELOAD_NEEDED until the operator reloads sshd, then clear', async (t) => {
  await withOpensshBroker('none', async (b, rig, sshd) => {
    t.false((await problems(b)).includes('SSHD_RELOAD_NEEDED'));
    const rotation = hostKeyRotation(rig.initial, rig.hostCa);
    rig.roots.set(rotation.committed);
    await waitFor(async () => (await problems(b)).includes('SSHD_RELOAD_NEEDED'), 'SSHD_RELOAD_NEEDED', DEADLINE_MS);
    t.deepEqual(await served(sshd), [formatPublicKey(rig.initial.hostKey.publicKey)], 'nothing reloaded sshd');
    // The operator reloads sshd.
    process.kill(Number((await readFile(rig.pidFile, 'utf8')).trim()), 'SIGHUP');
    await waitFor(async () => (await served(sshd)).includes(formatPublicKey(rotation.next.publicKey)), 'sshd to serve the new key', DEADLINE_MS);
    await waitFor(async () => !(await problems(b)).includes('SSHD_RELOAD_NEEDED'), 'SSHD_RELOAD_NEEDED to clear', DEADLINE_MS);
  });
});

sshdTest('fail/a reload that fails: SSHD_RELOAD_FAILED, retried until it works', async (t) => {
  await withOpensshBroker('pid-file', async (b, rig, sshd) => {
    // sshd's pid file gone: the broker cannot signal it.
    const pid = (await readFile(rig.pidFile, 'utf8')).trim();
    await rm(rig.pidFile);
    const rotation = hostKeyRotation(rig.initial, rig.hostCa);
    rig.roots.set(rotation.committed);
    await waitFor(async () => (await problems(b)).includes('SSHD_RELOAD_FAILED'), 'SSHD_RELOAD_FAILED', DEADLINE_MS);
    t.true(b.logs.some((l) => l.includes('SSHD_RELOAD_FAILED') && l.includes('cannot read ssh.sshdPidFile')));
    t.deepEqual(await served(sshd), [formatPublicKey(rig.initial.hostKey.publicKey)]);
    // The pid file back: the retry reloads sshd.
    await writeFile(rig.pidFile, `${pid}\n`);
    await waitFor(async () => (await served(sshd)).includes(formatPublicKey(rotation.next.publicKey)), 'the retried reload', DEADLINE_MS);
    await waitFor(async () => !(await problems(b)).includes('SSHD_RELOAD_FAILED'), 'SSHD_RELOAD_FAILED to clear', DEADLINE_MS);
  });
});
