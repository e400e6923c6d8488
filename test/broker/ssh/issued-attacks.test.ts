/**
 * Certificates the CA key signed but the broker never issued (issue 12
 * item 12, "Defence in depth in the gateway"), against a real broker (a
 * real SQLite store, the embedded gateway) and the real `ssh` client. The
 * attacker holds the user CA's signature (a stolen key, a CA bug) and a
 * device's key: it presents a never-issued serial, or kiosk-a's real serial
 * re-signed for kiosk-b's block. The gateway checks the serial against the
 * store at login (broker/ssh/issued.ts) and refuses; a store that fails
 * refuses too (fail closed). Genuine device and operator logins still work.
 */
import test from 'ava';
import { join } from 'node:path';
import type { OperatorCertificateResponse } from '../../../api/index.js';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, signDeviceCert, signOperatorCert, type Certificate, type KeyPair, type PortBlock } from '../../../ca/index.js';
import { isListening } from '../../../testkit/gateway.js';
import { withFleet, type Fleet, type FleetDevice } from '../../../testkit/operator-fixture.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts, type SshProcess } from '../../../testkit/ssh-client.js';

/** A serial far above anything the broker's counter hands out in a test. */
const NEVER_ISSUED = 2n ** 62n + 12345n;

type AuditItem = { actor: string; action: string; target: string | null; outcome: string; details: Record<string, unknown> };

async function authRefusals(f: Fleet): Promise<string[]> {
  const { items } = await f.b.call<{ items: AuditItem[] }>(f.b.admin, 'GET', '/v1/audit?limit=1000&action=ssh.auth');
  return items.filter((e) => e.outcome === 'refused').map((e) => String(e.details.reason));
}

/** Waits until the gateway's (fire-and-forget) audit of a refusal for REASON has reached the store. */
async function auditedRefusal(f: Fleet, reason: string): Promise<boolean> {
  await waitFor(async () => (await authRefusals(f)).includes(reason), `an ssh.auth refusal ${reason} in the audit trail`).catch(() => undefined);
  return (await authRefusals(f)).includes(reason);
}

const blockOf = (d: FleetDevice): PortBlock => d.grant.ports;
const now = (f: Fleet): Date => f.b.broker.core.clock();

/** A device certificate signed with the broker's own user CA key, with whatever fields the attacker chose. */
function forgeDevice(f: Fleet, o: { key: KeyPair; deviceId: string; ports: PortBlock; serial: bigint }): Certificate {
  return signDeviceCert({ ca: f.b.broker.core.trustRoots.current().signingUserCa, publicKey: o.key.publicKey, deviceId: o.deviceId, ports: o.ports, serial: o.serial, now: now(f), validitySeconds: 3600 });
}

let names = 0;

/** `ssh -N -R 127.0.0.1:PORT:…` with KEY and CERT against the broker's gateway. */
async function tunnelWith(f: Fleet, key: KeyPair, cert: Certificate | string, port: number, started: SshProcess[]): Promise<SshProcess> {
  const identity = await writeClientIdentity(f.b.dir, `attacker-${++names}`, key, cert);
  const knownHosts = await writeKnownHosts(join(f.b.dir, 'attacker_known_hosts'), '127.0.0.1', f.b.broker.sshPort, parsePublicKey(f.b.broker.core.ssh.hostKey));
  const ssh = spawnSsh([...sshArgs({ port: f.b.broker.sshPort, knownHosts, identity }), '-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:${port}:127.0.0.1:9`]);
  started.push(ssh);
  return ssh;
}

/** How an attempt on a free PORT ended: ssh's exit code, or "bound" as soon as the port listens. */
async function verdict(ssh: SshProcess, port: number): Promise<number | 'bound'> {
  let bound = false;
  await waitFor(async () => ssh.child.exitCode !== null || (bound = await isListening(port)), 'a verdict', 20_000);
  return bound ? 'bound' : ssh.exited;
}

/** `ssh -W TARGET` with an operator KEY and CERT: [exit code, stdout, stderr]. */
async function reach(f: Fleet, key: KeyPair, cert: Certificate | string, target: string): Promise<[number, string, string]> {
  const identity = await writeClientIdentity(f.b.dir, `op-${++names}`, key, typeof cert === 'string' ? parseCertificateLine(cert) : cert);
  const knownHosts = await writeKnownHosts(join(f.b.dir, 'op_known_hosts'), '127.0.0.1', f.b.broker.sshPort, parsePublicKey(f.b.broker.core.ssh.hostKey));
  const ssh = spawnSsh([...sshArgs({ port: f.b.broker.sshPort, knownHosts, identity, user: 'operator' }), '-W', target]);
  ssh.child.stdin.end('GET /echo HTTP/1.0\r\nHost: x\r\n\r\n');
  const code = await ssh.exited;
  return [code, ssh.stdout().toString(), ssh.stderr()];
}

async function stopAll(started: SshProcess[]): Promise<void> {
  await Promise.all(started.map((p) => p.stop()));
}

test.serial('attack/never-issued-serial: a CA-signed certificate for kiosk-a\'s key and block with a serial the store never issued is refused at login', (t) =>
  withFleet(async (f) => {
    const started: SshProcess[] = [];
    try {
      const a = await f.enroll('kiosk-a');
      await f.enroll('kiosk-b');
      const cert = forgeDevice(f, { key: a.key, deviceId: a.grant.deviceId, ports: blockOf(a), serial: NEVER_ISSUED });
      const ssh = await tunnelWith(f, a.key, cert, blockOf(a).first, started);
      t.is(await verdict(ssh, blockOf(a).first), 255, 'refused at login');
      t.regex(ssh.stderr(), /Permission denied \(publickey\)/);
      t.false(await isListening(blockOf(a).first));
      t.true(await auditedRefusal(f, 'SERIAL_UNKNOWN'), 'audited as SERIAL_UNKNOWN');
      const metrics = (await f.b.call<Buffer>(f.b.anonymous, 'GET', '/metrics')).toString();
      t.regex(metrics, /certunnel_ssh_auth_failures\{reason="SERIAL_UNKNOWN"\} 1/);
    } finally {
      await stopAll(started);
    }
  }));

test.serial('attack/serial-re-signed-for-another-block: kiosk-a\'s real serial re-signed with kiosk-b\'s block does not bind kiosk-b\'s port', (t) =>
  withFleet(async (f) => {
    const started: SshProcess[] = [];
    try {
      const a = await f.enroll('kiosk-a');
      const b = await f.enroll('kiosk-b');
      const serial = BigInt(a.grant.serial);
      // Key id kiosk-a, principal kiosk-b's block: kiosk-b is offline, its port free.
      const cert = forgeDevice(f, { key: a.key, deviceId: a.grant.deviceId, ports: blockOf(b), serial });
      const ssh = await tunnelWith(f, a.key, cert, blockOf(b).first, started);
      t.is(await verdict(ssh, blockOf(b).first), 255, 'refused at login');
      t.false(await isListening(blockOf(b).first), 'kiosk-b\'s port is not bound');
      t.true(await auditedRefusal(f, 'BLOCK_NOT_CURRENT'), 'audited as BLOCK_NOT_CURRENT');
    } finally {
      await stopAll(started);
    }
  }));

test.serial('attack/serial-re-signed-as-another-device: kiosk-a\'s serial re-signed as kiosk-b does not take over kiosk-b\'s live tunnel', (t) =>
  withFleet(async (f) => {
    const started: SshProcess[] = [];
    try {
      const a = await f.enroll('kiosk-a');
      const b = await f.enroll('kiosk-b', { connect: true });
      const httpB = blockOf(b).first + 1;
      // Key id and block of kiosk-b, kiosk-a's serial and key: a login as kiosk-b would take its port over.
      const cert = forgeDevice(f, { key: a.key, deviceId: b.grant.deviceId, ports: blockOf(b), serial: BigInt(a.grant.serial) });
      const ssh = await tunnelWith(f, a.key, cert, httpB, started);
      await waitFor(() => ssh.child.exitCode !== null || b.tunnel!.child.exitCode !== null, 'the attacker or kiosk-b to be disconnected', 20_000);
      t.is(b.tunnel!.child.exitCode, null, 'kiosk-b\'s tunnel is still up');
      t.is(await ssh.exited, 255, 'the attacker was refused');
      t.deepEqual(f.b.broker.ssh.presence!.forwardedPorts(b.grant.deviceId), [httpB]);
      t.true(await auditedRefusal(f, 'SERIAL_OTHER_DEVICE'), 'audited as SERIAL_OTHER_DEVICE');
    } finally {
      await stopAll(started);
    }
  }));

test.serial('attack/operator-certificates: a never-issued operator serial, and one re-signed to reach kiosk-b, are refused; the genuine one reaches kiosk-a', (t) =>
  withFleet(async (f) => {
    const a = await f.enroll('kiosk-a', { connect: true });
    const b = await f.enroll('kiosk-b', { connect: true });
    const key = generateKeyPair();
    const res = await f.b.call<OperatorCertificateResponse>(await f.b.apiKey('operator'), 'POST', '/v1/devices/kiosk-a/operator-certificate', { publicKey: formatPublicKey(key.publicKey) });
    const sign = (deviceId: string, ports: PortBlock, serial: bigint): Certificate =>
      signOperatorCert({ ca: f.b.broker.core.trustRoots.current().signingUserCa, publicKey: key.publicKey, operator: 'test-operator', deviceId, ports, serial, now: now(f) });
    const httpA = blockOf(a).first + 1;
    const httpB = blockOf(b).first + 1;

    const [okCode, okOut, okErr] = await reach(f, key, res.certificate, `127.0.0.1:${httpA}`);
    t.is(okCode, 0, okErr);
    t.regex(okOut, /"device":"kiosk-a"/);

    const [unknown, unknownOut] = await reach(f, key, sign(a.grant.deviceId, blockOf(a), NEVER_ISSUED), `127.0.0.1:${httpA}`);
    t.is(unknown, 255, 'never-issued operator serial');
    t.is(unknownOut, '');
    const [otherBlock, otherBlockOut] = await reach(f, key, sign(a.grant.deviceId, blockOf(b), BigInt(res.serial)), `127.0.0.1:${httpB}`);
    t.is(otherBlock, 255, 'kiosk-a\'s operator serial re-signed for kiosk-b\'s block');
    t.is(otherBlockOut, '');
    const [otherDevice, otherDeviceOut] = await reach(f, key, sign(b.grant.deviceId, blockOf(b), BigInt(res.serial)), `127.0.0.1:${httpB}`);
    t.is(otherDevice, 255, 'kiosk-a\'s operator serial re-signed as kiosk-b\'s');
    t.is(otherDeviceOut, '');
    t.is(b.http!.requests.length, 0, 'kiosk-b saw nothing');
    for (const reason of ['SERIAL_UNKNOWN', 'BLOCK_NOT_CURRENT', 'SERIAL_OTHER_DEVICE']) t.true(await auditedRefusal(f, reason), reason);
  }));

test.serial('fail-closed/store-lookup-throws: a genuine device certificate is refused while the store check fails, and gets in again once it works', (t) =>
  withFleet(async (f) => {
    const started: SshProcess[] = [];
    // The broker's own store object, whose method the gateway calls at each login: it fails as a broken disk would make it.
    const store = f.b.broker.store;
    const original = store.findIssuedCertificate;
    try {
      const a = await f.enroll('kiosk-a');
      const cert = parseCertificateLine(a.grant.certificate);
      store.findIssuedCertificate = () => Promise.reject(new Error('disk I/O error'));
      const refused = await tunnelWith(f, a.key, cert, blockOf(a).first, started);
      t.is(await verdict(refused, blockOf(a).first), 255, 'refused while the store fails');
      t.true(await auditedRefusal(f, 'INTERNAL_ERROR'), 'audited as INTERNAL_ERROR');
      t.true(f.b.logs.some((l) => l.includes('ssh certificate store check failed')), 'logged');

      store.findIssuedCertificate = original;
      const admitted = await tunnelWith(f, a.key, cert, blockOf(a).first, started);
      t.is(await verdict(admitted, blockOf(a).first), 'bound', admitted.stderr());
    } finally {
      store.findIssuedCertificate = original;
      await stopAll(started);
    }
  }));

test.serial('ok/genuine logins: enrolled and renewed device certificates bind their own block', (t) =>
  withFleet(async (f) => {
    const a = await f.enroll('kiosk-a', { connect: true });
    t.deepEqual(f.b.broker.ssh.presence!.forwardedPorts(a.grant.deviceId), [blockOf(a).first + 1]);
    await f.disconnect(a);
    const renewed = await f.b.call<{ certificate: string; serial: string }>(f.b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: a.grant.deviceId, key: a.key }));
    t.not(renewed.serial, a.grant.serial);
    const started: SshProcess[] = [];
    try {
      const ssh = await tunnelWith(f, a.key, renewed.certificate, blockOf(a).first, started);
      t.is(await verdict(ssh, blockOf(a).first), 'bound', ssh.stderr());
      t.deepEqual(await authRefusals(f), []);
    } finally {
      await stopAll(started);
    }
  }));
