/**
 * Control-plane throughput over real HTTPS against a broker process with its
 * SQLite store: enrollments/s and renewals/s at a fixed concurrency, with
 * p50/p99 latency. The load generator (http-load.ts) runs in this process;
 * the broker in a child process (two cores: one each, roughly).
 * cluster-bench.ts measures the same on PostgreSQL and on three nodes.
 * Usage: npm run bench:api [-- --enrollments 4000 --renewals 8000 --concurrency 32]
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildRenewRequest } from '../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair, type KeyPair } from '../../ca/index.js';
import { formatLoadRow, LOAD_HEADER, loadAgent, mintTokens, runLoad } from './http-load.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const ENROLLMENTS = arg('enrollments', 4000);
const RENEWALS = arg('renewals', 8000);
const CONCURRENCY = arg('concurrency', 32);
const ENTRY = fileURLToPath(new URL('../../cli/main.ts', import.meta.url));

const agent = loadAgent(CONCURRENCY);

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
    const tokens = await mintTokens(agent, ready.apiUrl, adminKey, ENROLLMENTS);
    const keys: KeyPair[] = tokens.map(() => generateKeyPair());
    const enrollBodies = tokens.map((token, i) => ({ token, publicKey: formatPublicKey(keys[i]!.publicKey) }));

    const rows = [LOAD_HEADER];
    const deviceIds: string[] = [];
    const load = { agent, urls: [ready.apiUrl], concurrency: CONCURRENCY };
    rows.push(formatLoadRow(await runLoad({ ...load, label: 'enroll', bodies: enrollBodies, path: '/v1/enroll', expect: 201, answered: (i, json) => (deviceIds[i] = (json as { deviceId: string }).deviceId) })));

    const renewBodies = Array.from({ length: RENEWALS }, (_, i) => {
      const d = i % deviceIds.length;
      return buildRenewRequest({ deviceId: deviceIds[d]!, key: keys[d]! });
    });
    rows.push(formatLoadRow(await runLoad({ ...load, label: 'renew', bodies: renewBodies, path: '/v1/renew', expect: 200 })));
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
