/**
 * CA throughput, one run on one machine:
 *   - raw Ed25519 signatures/s with node:crypto (the ceiling),
 *   - device certificates signed/s by ca/ in-process,
 *   - certificate verifications/s by ca/ (parse + signature + checks),
 *   - `ssh-keygen -s` certificates/s, one process per certificate (what
 *     operators script today).
 * Usage: npm run bench:ca [-- --seconds 3]
 */
import { execFile } from 'node:child_process';
import { sign } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  encodePrivateKey,
  formatPublicKey,
  generateKeyPair,
  parseCertificate,
  signDeviceCert,
  verifyCertificate,
} from '../../ca/index.js';

const run = promisify(execFile);
const secondsArg = process.argv.indexOf('--seconds');
const SECONDS = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 2;

function measure(name: string, fn: (i: number) => void): { name: string; perSecond: number } {
  for (let i = 0; i < 200; i++) fn(i); // warm up
  const deadline = performance.now() + SECONDS * 1000;
  let n = 0;
  const start = performance.now();
  while (performance.now() < deadline) {
    for (let j = 0; j < 100; j++) fn(n++);
  }
  return { name, perSecond: n / ((performance.now() - start) / 1000) };
}

async function measureSshKeygen(count: number): Promise<{ name: string; perSecond: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-bench-'));
  try {
    const ca = generateKeyPair();
    const dev = generateKeyPair();
    await writeFile(join(dir, 'ca'), encodePrivateKey(ca), { mode: 0o600 });
    await writeFile(join(dir, 'dev.pub'), `${formatPublicKey(dev.publicKey)}\n`);
    const start = performance.now();
    for (let i = 1; i <= count; i++) {
      await run('ssh-keygen', ['-q', '-s', join(dir, 'ca'), '-I', `device:d${i}`, '-n', 'ports-20000-20001', '-z', String(i), '-V', '-1m:+1h', '-O', 'clear', '-O', 'permit-port-forwarding', join(dir, 'dev.pub')]);
    }
    return { name: 'ssh-keygen -s (process per cert)', perSecond: count / ((performance.now() - start) / 1000) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const ca = generateKeyPair();
const dev = generateKeyPair();
const now = new Date();
const payload = Buffer.alloc(300, 7); // about the size of a device certificate's signed part
const sample = signDeviceCert({ ca, publicKey: dev.publicKey, deviceId: 'dev_bench', ports: { first: 20000, last: 20001 }, serial: 1n, now });

const rows = [
  measure('raw Ed25519 sign (node:crypto)', () => sign(null, payload, ca.privateKey)),
  measure('ca/ signDeviceCert', (i) => signDeviceCert({ ca, publicKey: dev.publicKey, deviceId: 'dev_bench', ports: { first: 20000, last: 20001 }, serial: BigInt(i + 1), now })),
  measure('ca/ parse + verifyCertificate', () =>
    verifyCertificate(parseCertificate(sample.blob), { trustedCaKeys: [ca.publicKey], type: 'user', now, principal: 'ports-20000-20001' })),
  await measureSshKeygen(200),
];

const raw = rows[0]!.perSecond;
console.log(`node ${process.version}, ${SECONDS}s per in-process measurement`);
console.log(`${'operation'.padEnd(36)} ${'ops/s'.padStart(10)}  ${'vs raw sign'.padStart(11)}`);
for (const row of rows) {
  console.log(`${row.name.padEnd(36)} ${row.perSecond.toFixed(0).padStart(10)}  ${((row.perSecond / raw) * 100).toFixed(1).padStart(10)}%`);
}
