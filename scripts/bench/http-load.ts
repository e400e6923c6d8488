/**
 * The control-plane load generator the API benchmarks share (api-bench.ts,
 * cluster-bench.ts): JSON POSTs over HTTPS with keep-alive, a fixed number
 * in flight, latency per request, and a table row per run. The broker's
 * TLS certificate is self-signed: these clients do not check it (the
 * benchmarks run on loopback against a broker they started).
 */
import { Agent, request } from 'node:https';

export interface Answer {
  readonly status: number;
  readonly json: unknown;
}

/** A keep-alive agent for SOCKETS connections per origin. */
export function loadAgent(sockets: number): Agent {
  return new Agent({ keepAlive: true, maxSockets: sockets, rejectUnauthorized: false });
}

export function post(agent: Agent, url: string, path: string, body: unknown, apiKey?: string): Promise<Answer> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, url), {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': payload.length, ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json: unknown = text;
        try {
          json = JSON.parse(text);
        } catch {
          // kept as text for the failure message
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** COUNT enrollment tokens from the broker at URL, minted in batches by the admin key. */
export async function mintTokens(agent: Agent, url: string, adminKey: string, count: number): Promise<string[]> {
  const tokens: string[] = [];
  while (tokens.length < count) {
    const res = await post(agent, url, '/v1/tokens', { count: Math.min(5000, count - tokens.length) }, adminKey);
    if (res.status !== 201 && res.status !== 200) throw new Error(`minting tokens: HTTP ${res.status} ${JSON.stringify(res.json)}`);
    tokens.push(...(res.json as { tokens: Array<{ token: string }> }).tokens.map((t) => t.token));
  }
  return tokens;
}

export interface LoadRun {
  readonly label: string;
  readonly count: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Answers whose status was not the expected one, and requests that failed. */
  readonly failures: number;
  /** The first few failures, for the message. */
  readonly failureSamples: readonly string[];
}

export interface LoadOptions {
  readonly label: string;
  readonly agent: Agent;
  /** Broker API URLs; worker W sends to urls[W % urls.length]. */
  readonly urls: readonly string[];
  readonly path: string;
  readonly bodies: readonly unknown[];
  readonly expect: number;
  /** Requests in flight per URL. */
  readonly concurrency: number;
  /** Sees each expected answer, with its body's index. */
  readonly answered?: (i: number, json: unknown) => void;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/** POSTs every body, CONCURRENCY at a time per URL, from one shared queue. */
export async function runLoad(o: LoadOptions): Promise<LoadRun> {
  const latencies: number[] = [];
  const failureSamples: string[] = [];
  let next = 0;
  let failures = 0;
  const fail = (why: string): void => {
    failures++;
    if (failureSamples.length < 5) failureSamples.push(why);
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: o.concurrency * o.urls.length }, async (_, w) => {
    const url = o.urls[w % o.urls.length]!;
    while (next < o.bodies.length) {
      const i = next++;
      const t0 = performance.now();
      try {
        const res = await post(o.agent, url, o.path, o.bodies[i]);
        latencies.push(performance.now() - t0);
        if (res.status !== o.expect) fail(`HTTP ${res.status} ${JSON.stringify(res.json).slice(0, 200)}`);
        else o.answered?.(i, res.json);
      } catch (err) {
        fail(err instanceof Error ? err.message : String(err));
      }
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { label: o.label, count: o.bodies.length, seconds, perSecond: o.bodies.length / seconds, p50Ms: percentile(latencies, 0.5), p99Ms: percentile(latencies, 0.99), failures, failureSamples };
}

export const LOAD_HEADER = `${'operation'.padEnd(28)} ${'count'.padStart(7)} ${'req/s'.padStart(8)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'failed'.padStart(8)}`;

export function formatLoadRow(r: LoadRun): string {
  return `${r.label.padEnd(28)} ${String(r.count).padStart(7)} ${r.perSecond.toFixed(0).padStart(8)} ${r.p50Ms.toFixed(1).padStart(8)} ${r.p99Ms.toFixed(1).padStart(8)} ${String(r.failures).padStart(8)}`;
}

/** Throws (the benchmark exits non-zero) if any request of RUN failed. */
export function assertNoFailures(run: LoadRun): void {
  if (run.failures > 0) throw new Error(`${run.label}: ${run.failures} of ${run.count} requests failed, e.g.:\n  ${run.failureSamples.join('\n  ')}`);
}
