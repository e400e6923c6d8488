import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  SshWriter,
  describeCertificate,
  encodePrivateKey,
  formatCertificate,
  formatPublicKey,
  generateKeyPair,
  isCaError,
  parseCertificate,
  parseCertificateLine,
  signCertificate,
  signDeviceCert,
  signHostCert,
  signOperatorCert,
  verifyCertificate,
  type CaErrorCode,
  type Certificate,
  type CertificateFields,
} from '../../ca/index.js';

const run = promisify(execFile);
const NOW = new Date('2026-11-25T12:00:00Z');
const nowS = NOW.getTime() / 1000;

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-cert-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** ssh-keygen -L output, parsed into its fields. */
async function sshKeygenList(dir: string, cert: Certificate): Promise<Record<string, string[]>> {
  const path = join(dir, `c${Math.random().toString(36).slice(2)}-cert.pub`);
  await writeFile(path, `${formatCertificate(cert)}\n`);
  const { stdout } = await run('ssh-keygen', ['-L', '-f', path]);
  const out: Record<string, string[]> = {};
  let current = '';
  for (const line of stdout.split('\n').slice(1)) {
    const m = /^ {8}([A-Za-z ]+): ?(.*)$/.exec(line);
    if (m) {
      current = m[1]!;
      out[current] = m[2] ? [m[2]] : [];
    } else if (line.trim()) {
      out[current]!.push(line.trim());
    }
  }
  return out;
}

const ca = generateKeyPair();
const otherCa = generateKeyPair();
const device = generateKeyPair();

function deviceCert(overrides: Partial<Parameters<typeof signDeviceCert>[0]> = {}): Certificate {
  return signDeviceCert({ ca, publicKey: device.publicKey, deviceId: 'dev_k1', ports: { first: 20000, last: 20001 }, serial: 7n, now: NOW, ...overrides });
}

test('ok/device certificate reads back in ssh-keygen -L with every field', async (t) => {
  await withDir(async (dir) => {
    const cert = deviceCert({ serial: 123456789012345n, validitySeconds: 1800 });
    const listed = await sshKeygenList(dir, cert);
    t.deepEqual(listed.Type, ['ssh-ed25519-cert-v01@openssh.com user certificate']);
    t.deepEqual(listed['Key ID'], ['"device:dev_k1"']);
    t.deepEqual(listed.Serial, ['123456789012345']);
    t.deepEqual(listed.Principals, ['ports-20000-20001']);
    t.deepEqual(listed['Critical Options'], ['(none)']);
    t.deepEqual(listed.Extensions, ['permit-port-forwarding']);
    // ssh-keygen prints local time; ours must print the very same text.
    const ours = describeCertificate(parseCertificate(cert.blob));
    t.true(ours.includes(`Valid: ${listed.Valid![0]}`));
    t.is(cert.validAfter, BigInt(nowS - 60));
    t.is(cert.validBefore, BigInt(nowS + 1800));
  });
});

test('ok/operator and host certificates read back in ssh-keygen -L', async (t) => {
  await withDir(async (dir) => {
    const op = signOperatorCert({ ca, publicKey: device.publicKey, operator: 'alice', deviceId: 'dev_k1', ports: { first: 20000, last: 20001 }, serial: 8n, now: NOW, validityMinutes: 5 });
    const listedOp = await sshKeygenList(dir, op);
    t.deepEqual(listedOp.Principals, ['reach-20000-20001']);
    t.deepEqual(listedOp['Key ID'], ['"operator:alice:device:dev_k1"']);
    t.is(op.validBefore - op.validAfter, 360n);
    const hostCa = generateKeyPair();
    const host = signHostCert({ hostCa, publicKey: device.publicKey, hostnames: ['broker.example', '127.0.0.1'], serial: 1n, now: NOW });
    const listedHost = await sshKeygenList(dir, host);
    t.deepEqual(listedHost.Type, ['ssh-ed25519-cert-v01@openssh.com host certificate']);
    t.deepEqual(listedHost.Principals, ['broker.example', '127.0.0.1']);
    t.deepEqual(listedHost.Extensions, ['(none)']);
  });
});

test('ok/certificate made by ssh-keygen -s parses and verifies', async (t) => {
  await withDir(async (dir) => {
    await writeFile(join(dir, 'ca'), encodePrivateKey(ca), { mode: 0o600 });
    await writeFile(join(dir, 'dev.pub'), `${formatPublicKey(device.publicKey)}\n`);
    await run('ssh-keygen', ['-q', '-s', join(dir, 'ca'), '-I', 'device:x', '-n', 'ports-1-2,other', '-z', '99', '-V', '-5m:+10m', '-O', 'clear', '-O', 'permit-port-forwarding', '-O', 'force-command=/bin/true', join(dir, 'dev.pub')]);
    const cert = parseCertificateLine(await readFile(join(dir, 'dev-cert.pub'), 'utf8'));
    t.is(cert.serial, 99n);
    t.is(cert.keyId, 'device:x');
    t.deepEqual(cert.principals, ['ports-1-2', 'other']);
    t.deepEqual(cert.criticalOptions, { 'force-command': '/bin/true' });
    t.deepEqual({ ...cert.extensions }, { 'permit-port-forwarding': '' });
    t.true(cert.publicKey.equals(device.publicKey));
    verifyCertificate(cert, { trustedCaKeys: [ca.publicKey], type: 'user', now: new Date(), principal: 'other', supportedCriticalOptions: ['force-command'] });
    const err = t.throws(() => verifyCertificate(cert, { trustedCaKeys: [ca.publicKey], type: 'user', now: new Date() }));
    t.true(isCaError(err, 'CERT_UNKNOWN_CRITICAL_OPTION'));
    // Our re-encoding of the parsed fields is byte-identical to ssh-keygen's.
    const again = signCertificate({ ...cert }, ca);
    t.true(again.signedData.equals(cert.signedData));
  });
});

/** Rewrites one field of a signed certificate without re-signing it. */
function tamper(cert: Certificate, edit: Partial<CertificateFields>): Certificate {
  const fields = { ...cert, ...edit };
  const forged = signCertificate(fields, otherCa); // encodes the fields; its signature is thrown away
  // Keep the original signature key (the last 4 + 51 signed bytes) and signature.
  const blob = new SshWriter()
    .raw(forged.signedData.subarray(0, forged.signedData.length - 55))
    .raw(cert.signedData.subarray(cert.signedData.length - 55))
    .string(cert.signature)
    .toBuffer();
  return parseCertificate(blob);
}

function flipBit(buf: Buffer, index: number): Buffer {
  const copy = Buffer.from(buf);
  copy[index]! ^= 0x01;
  return copy;
}

const verifyCases: Array<{ name: string; cert: () => Certificate; code: CaErrorCode; opts?: object }> = [
  { name: 'fail/principal-changed', cert: () => tamper(deviceCert(), { principals: ['ports-20002-20003'] }), code: 'CERT_BAD_SIGNATURE' },
  { name: 'fail/serial-changed', cert: () => tamper(deviceCert(), { serial: 8n }), code: 'CERT_BAD_SIGNATURE' },
  { name: 'fail/validity-extended', cert: () => tamper(deviceCert(), { validBefore: BigInt(nowS + 86400 * 365) }), code: 'CERT_BAD_SIGNATURE' },
  { name: 'fail/key-swapped', cert: () => tamper(deviceCert(), { publicKey: generateKeyPair().publicKey }), code: 'CERT_BAD_SIGNATURE' },
  {
    name: 'fail/signature-bit-flipped',
    cert: () => {
      const c = deviceCert();
      return parseCertificate(flipBit(c.blob, c.blob.length - 10));
    },
    code: 'CERT_BAD_SIGNATURE',
  },
  { name: 'fail/other-ca', cert: () => signDeviceCert({ ca: otherCa, publicKey: device.publicKey, deviceId: 'dev_k1', ports: { first: 20000, last: 20001 }, serial: 7n, now: NOW }), code: 'CERT_UNKNOWN_CA' },
  { name: 'fail/host-cert-as-user', cert: () => signHostCert({ hostCa: ca, publicKey: device.publicKey, hostnames: ['h'], serial: 3n, now: NOW }), code: 'CERT_WRONG_TYPE' },
  { name: 'fail/expired', cert: () => deviceCert({ now: new Date(NOW.getTime() - 3601_000) }), code: 'CERT_EXPIRED' },
  { name: 'fail/not-yet-valid', cert: () => deviceCert({ now: new Date(NOW.getTime() + 120_000) }), code: 'CERT_NOT_YET_VALID' },
  { name: 'fail/other-principal', cert: () => deviceCert(), code: 'CERT_PRINCIPAL_MISMATCH', opts: { principal: 'ports-20002-20003' } },
];

for (const c of verifyCases) {
  test(c.name, (t) => {
    const cert = c.cert();
    const err = t.throws(() => verifyCertificate(cert, { trustedCaKeys: [ca.publicKey], type: 'user', now: NOW, ...c.opts }));
    t.true(isCaError(err, c.code), `expected ${c.code}, got ${(err as { code?: string }).code}`);
  });
}

test('ok/untampered certificate verifies at the edges of its window', (t) => {
  const cert = deviceCert();
  for (const now of [nowS - 60, nowS, nowS + 3599]) {
    t.notThrows(() => verifyCertificate(cert, { trustedCaKeys: [otherCa.publicKey, ca.publicKey], type: 'user', now, principal: 'ports-20000-20001' }));
  }
  t.true(isCaError(t.throws(() => verifyCertificate(cert, { trustedCaKeys: [ca.publicKey], type: 'user', now: nowS + 3600 })), 'CERT_EXPIRED'));
  t.true(isCaError(t.throws(() => verifyCertificate(cert, { trustedCaKeys: [ca.publicKey], type: 'user', now: nowS - 61 })), 'CERT_NOT_YET_VALID'));
});

test('fail/malformed certificates are CERT_MALFORMED, never a crash', (t) => {
  const blob = deviceCert().blob;
  const inputs = [Buffer.alloc(0), blob.subarray(0, 40), blob.subarray(0, blob.length - 1), Buffer.concat([blob, Buffer.from([0])]), Buffer.from('garbage')];
  for (const input of inputs) {
    t.true(isCaError(t.throws(() => parseCertificate(input)), 'CERT_MALFORMED'));
  }
  t.true(isCaError(t.throws(() => parseCertificateLine('ssh-ed25519-cert-v01@openssh.com %%%')), 'CERT_MALFORMED'));
});

test('fail/profiles refuse what they do not sign', (t) => {
  const cases: Array<() => unknown> = [
    () => deviceCert({ serial: 0n }),
    () => deviceCert({ validitySeconds: 8 * 24 * 3600 }),
    () => deviceCert({ deviceId: 'bad id' }),
    () => deviceCert({ ports: { first: 20002, last: 20001 } }),
    () => deviceCert({ ports: { first: 0, last: 1 } }),
    () => signOperatorCert({ ca, publicKey: device.publicKey, operator: 'a', deviceId: 'd', ports: { first: 1, last: 2 }, serial: 1n, now: NOW, validityMinutes: 61 }),
    () => signHostCert({ hostCa: ca, publicKey: device.publicKey, hostnames: [], serial: 1n, now: NOW }),
  ];
  for (const sign of cases) t.true(isCaError(t.throws(sign), 'CERT_PROFILE_VIOLATION'));
});
