/**
 * Store throughput for enrollment-shaped transactions: read and redeem a token,
 * insert the device, allocate its port block, take a serial, record the
 * certificate, append an audit event, with `concurrency` transactions in
 * flight. Throwaway measurement, not a test.
 *
 *   node --import tsx scripts/bench/store-bench.ts [--n 5000] [--concurrency 32] [--readers 1]
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openStore, type NewToken, type Store } from '../../broker/store/index.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '5000' },
    concurrency: { type: 'string', default: '32' },
    readers: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
  },
});
const N = Number(values.n);
const CONCURRENCY = Number(values.concurrency);
const READERS = Number(values.readers);
const ROUNDS = Number(values.rounds);
const POOL = { first: 10000, last: 65000, perDevice: 2 };
const HOUR = 3_600_000;

const hex = (n: number) => randomBytes(n).toString('hex');

async function enroll(store: Store, tok: NewToken): Promise<void> {
  const now = new Date();
  const deviceId = `dev_${hex(8)}`;
  await store.transaction(async (tx) => {
    // as broker/core/enroll.ts: read the token (binding check), then redeem it
    const token = await tx.findTokenByHash(tok.tokenHash);
    if (!token || !(await tx.redeemToken(tok.tokenHash, deviceId, now))) throw new Error('token refused');
    const fingerprint = `SHA256:${hex(32)}`;
    await tx.insertDevice({
      id: deviceId,
      name: `bench-${deviceId}`,
      hardwareSerial: null,
      publicKey: `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${hex(16)}`,
      keyFingerprint: fingerprint,
      labels: { site: 'bench' },
      tokenId: tok.id,
      createdAt: now,
    });
    const block = await tx.allocatePortBlock(deviceId, POOL, now);
    const serial = await tx.nextSerial();
    await tx.insertCertificate({
      serial,
      deviceId,
      kind: 'device',
      keyFingerprint: fingerprint,
      keyId: `device:${deviceId}`,
      principal: `ports-${block.first}-${block.last}`,
      validAfter: new Date(now.getTime() - 60_000),
      validBefore: new Date(now.getTime() + HOUR),
      issuedAt: now,
    });
    await tx.appendAudit({
      at: now,
      actor: `token:${tok.id}`,
      action: 'device.enroll',
      target: deviceId,
      remoteAddr: '192.0.2.1',
      outcome: 'ok',
      details: { serial: serial.toString(), ports: [block.first, block.last] },
    });
  });
}

function percentile(values: number[], p: number): string {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!.toFixed(1);
}

async function round(): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-bench-'));
  const store = await openStore({ filename: join(dir, 'bench.db'), readConnections: READERS });
  try {
    const now = new Date();
    const tokens: NewToken[] = Array.from({ length: N }, (_, i) => ({
      id: `tok_${i}_${hex(4)}`,
      tokenHash: hex(32),
      batch: 'bench',
      bindName: null,
      bindSerial: null,
      createdAt: now,
      createdBy: 'bench',
      expiresAt: new Date(now.getTime() + HOUR),
    }));
    await store.insertTokens(tokens);

    let next = 0;
    const errors = new Map<string, number>();
    const latencies: number[] = [];
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < tokens.length) {
          const tok = tokens[next++]!;
          const started = performance.now();
          await enroll(store, tok).catch((err: unknown) => {
            const key = (err as { code?: string }).code ?? String(err);
            errors.set(key, (errors.get(key) ?? 0) + 1);
          });
          latencies.push(performance.now() - started);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const ok = N - [...errors.values()].reduce((a, b) => a + b, 0);
    console.log(
      `readers=${READERS} concurrency=${CONCURRENCY} n=${N}: ${(ok / seconds).toFixed(0)} enroll tx/s, ` +
        `process CPU ${((cpu.user + cpu.system) / 1000 / N).toFixed(3)} ms/tx, ` +
        `latency p50 ${percentile(latencies, 0.5)} p99 ${percentile(latencies, 0.99)} max ${percentile(latencies, 1)} ms` +
        (errors.size ? `, errors ${JSON.stringify(Object.fromEntries(errors))}` : ''),
    );
    return ok / seconds;
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const rates: number[] = [];
for (let i = 0; i < ROUNDS; i++) rates.push(await round());
rates.sort((a, b) => a - b);
console.log(`median of ${ROUNDS}: ${rates[Math.floor(ROUNDS / 2)]!.toFixed(0)} enroll tx/s`);
