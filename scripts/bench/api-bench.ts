/**
 * Control-plane throughput over real HTTPS against a broker process with its
 * SQLite store: enrollments/s and renewals/s at a fixed concurrency, with
 * p50/p99 latency. The load generator runs in this process; the broker in a
 * child process (two cores: one each, roughly).
 * Usage: npm run bench:api [-- --enrollments 4000 --renewals 8000 --concurrency 32]
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildRenewRequest } from '../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../ca/index.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const ENROLLMENTS = arg('enrollments', 4000);
const RENEWALS = arg('renewals', 8000);
const CONCURRENCY = arg('concurrency', 32);
const ENTRY = fileURLToPath(new URL('../../cli/main.ts', import.meta.url));

const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY, rejectUnauthorized: false });

function post(url: string, path: string, body: unknown, apiKey?: string): Promise<{ status: number; json: unknown }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': payload.length, ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * POSTs every body to PATH, CONCURRENCY at a time; a row of the table: count,
 * rate, p50/p99 latency, and the answers whose status was not EXPECT.
 * ANSWERED sees each expected answer (with its body's index).
 */
async function run(label: string, bodies: unknown[], url: string, path: string, expect: number, answered?: (i: number, json: unknown) => void): Promise<string> {
  const latencies: number[] = [];
  let next = 0;
  let failures = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < bodies.length) {
      const i = next++;
      const t0 = performance.now();
      const res = await post(url, path, bodies[i]);
      latencies.push(performance.now() - t0);
      if (res.status !== expect) failures++;
      else answered?.(i, res.json);
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number): string => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!.toFixed(1);
  return `${label.padEnd(12)} ${String(bodies.length).padStart(7)} ${(bodies.length / seconds).toFixed(0).padStart(8)} ${pct(0.5).padStart(8)} ${pct(0.99).padStart(8)} ${String(failures).padStart(8)}`;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-apibench-'));
  const data = join(dir, 'data');
  const child = spawn(process.execPath, [...(process.env.BENCH_BROKER_NODE_ARGS?.split(' ').filter(Boolean) ?? []), '--import', 'tsx', ENTRY, 'start', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let out = '';
    const ready = await new Promise<{ apiUrl: string }>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        const line = out.split('\n').find((l) => l.startsWith('{"ready"'));
        if (line) resolve(JSON.parse(line) as { apiUrl: string });
      });
      child.once('exit', (code) => reject(new Error(`broker exited ${code}`)));
    });
    const adminKey = /^\s+(ctk_\S+)$/m.exec(out)![1]!;
    // Tokens in batches, keys ahead of time: the timed part is the broker's work.
    const tokens: string[] = [];
    while (tokens.length < ENROLLMENTS) {
      const res = await post(ready.apiUrl, '/v1/tokens', { count: Math.min(5000, ENROLLMENTS - tokens.length) }, adminKey);
      tokens.push(...(res.json as { tokens: Array<{ token: string }> }).tokens.map((t) => t.token));
    }
    const keys: KeyPair[] = tokens.map(() => generateKeyPair());
    const enrollBodies = tokens.map((token, i) => ({ token, publicKey: formatPublicKey(keys[i]!.publicKey) }));

    const rows = [`${'operation'.padEnd(12)} ${'count'.padStart(7)} ${'req/s'.padStart(8)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'failed'.padStart(8)}`];
    const deviceIds: string[] = [];
    rows.push(await run('enroll', enrollBodies, ready.apiUrl, '/v1/enroll', 201, (i, json) => (deviceIds[i] = (json as { deviceId: string }).deviceId)));

    const renewBodies = Array.from({ length: RENEWALS }, (_, i) => {
      const d = i % deviceIds.length;
      return buildRenewRequest({ deviceId: deviceIds[d]!, key: keys[d]! });
    });
    rows.push(await run('renew', renewBodies, ready.apiUrl, '/v1/renew', 200));
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    console.log(`node ${process.version}, HTTPS (keep-alive, TLS pin ${pin.slice(0, 20)}…), SQLite WAL, concurrency ${CONCURRENCY}`);
    for (const row of rows) console.log(row);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    agent.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
