/**
 * Login latency at a whole broker's embedded gateway: what a device waits
 * from TCP connect until the gateway has authenticated it (ssh2's "ready"),
 * and until its forward is bound, with the broker's real SQLite store
 * behind the gateway (the store check at login, broker/ssh/issued.ts, is
 * part of that path; scripts/bench/ssh-bench.ts runs the gateway alone,
 * without a store). The broker runs in this process (testkit/broker.ts);
 * the devices are ssh2 clients with the agent's certificate shim.
 *
 *   node --import tsx scripts/bench/login-bench.ts [--devices 50] [--logins 600] [--concurrency 8] [--json]
 *
 * Phases: LOGINS sequential logins (latency), then LOGINS logins
 * CONCURRENCY at a time (logins/s); each login binds its device's first
 * port and disconnects. Logins dial from 127.0.0.(1 + i % 250) (Linux
 * routes 127/8 to lo) so that the gateway's per-address rate limit (burst
 * 100, then 10/s) does not throttle the run. When the store has
 * findIssuedCertificate, its cost alone is timed too (sequential calls on
 * the read connection).
 */
import ssh2 from 'ssh2';
import { certificateAuthHandler } from '../../agent/ssh2-cert-auth.js';
import type { EnrollResponse } from '../../api/index.js';
import { formatPublicKey, generateKeyPair, parsePublicKey, publicKeyBlob, type KeyPair } from '../../ca/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';

interface Device {
  readonly key: KeyPair;
  readonly grant: EnrollResponse;
}

const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};

const DEVICES = arg('--devices', 50);
const LOGINS = arg('--logins', 600);
const CONCURRENCY = arg('--concurrency', 8);

async function enroll(b: TestBroker, n: number): Promise<Device[]> {
  const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: n });
  const devices: Device[] = [];
  for (const [i, { token }] of tokens.entries()) {
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: formatPublicKey(key.publicKey), name: `bench-${i}` });
    devices.push({ key, grant });
  }
  return devices;
}

/** One login of DEV from LOCALADDRESS: [ms to "ready", ms to the bound forward]. */
function login(b: TestBroker, dev: Device, localAddress: string): Promise<[number, number]> {
  const hostKey = publicKeyBlob(parsePublicKey(dev.grant.ssh.hostKey));
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    const t0 = performance.now();
    let ready = 0;
    client.on('error', reject);
    client.once('ready', () => {
      ready = performance.now() - t0;
      client.forwardIn('127.0.0.1', dev.grant.ports.first, (err) => {
        const bound = performance.now() - t0;
        client.end();
        if (err) reject(err);
        else resolve([ready, bound]);
      });
    });
    client.connect({
      host: '127.0.0.1',
      port: b.broker.sshPort,
      localAddress,
      username: 'tunnel',
      hostVerifier: (key: Buffer) => key.equals(hostKey),
      authHandler: certificateAuthHandler(client, { username: 'tunnel', key: dev.key, certificate: dev.grant.certificate }),
      readyTimeout: 30_000,
    });
  });
}

function summary(values: number[]): { median: number; p90: number; mean: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { median: at(0.5), p90: at(0.9), mean: values.reduce((s, v) => s + v, 0) / values.length };
}

async function run(b: TestBroker): Promise<Record<string, unknown>> {
  const devices = await enroll(b, DEVICES);
  let next = 0;
  const one = async (): Promise<[number, number]> => {
    const i = next++;
    return login(b, devices[i % devices.length]!, `127.0.0.${1 + (i % 250)}`);
  };
  for (let i = 0; i < 20; i++) await one(); // warm-up: JIT, connections, page cache

  const sequential: Array<[number, number]> = [];
  for (let i = 0; i < LOGINS; i++) sequential.push(await one());

  const concurrent: Array<[number, number]> = [];
  const t0 = performance.now();
  let left = LOGINS;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (left-- > 0) concurrent.push(await one());
    }),
  );
  const seconds = (performance.now() - t0) / 1000;

  const result: Record<string, unknown> = {
    devices: DEVICES,
    logins: LOGINS,
    sequentialReadyMs: summary(sequential.map(([r]) => r)),
    sequentialBoundMs: summary(sequential.map(([, f]) => f)),
    concurrency: CONCURRENCY,
    concurrentReadyMs: summary(concurrent.map(([r]) => r)),
    loginsPerSecond: LOGINS / seconds,
  };
  const store = b.broker.store as unknown as { findIssuedCertificate?: (serial: bigint) => Promise<unknown> };
  if (store.findIssuedCertificate) {
    const serials = devices.map((d) => BigInt(d.grant.serial));
    const n = 5000;
    const s0 = performance.now();
    for (let i = 0; i < n; i++) await store.findIssuedCertificate(serials[i % serials.length]!);
    result.findIssuedCertificateUs = ((performance.now() - s0) * 1000) / n;
  }
  return result;
}

async function main(): Promise<void> {
  const result = await withBroker(run, { logLevel: 'warn' });
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  const ms = (s: unknown): string => {
    const { median, p90, mean } = s as { median: number; p90: number; mean: number };
    return `median ${median.toFixed(2)} ms, p90 ${p90.toFixed(2)} ms, mean ${mean.toFixed(2)} ms`;
  };
  process.stdout.write(
    [
      `${result.logins} logins over ${result.devices} devices`,
      `sequential, connect → authenticated: ${ms(result.sequentialReadyMs)}`,
      `sequential, connect → forward bound: ${ms(result.sequentialBoundMs)}`,
      `${result.concurrency} at a time, connect → authenticated: ${ms(result.concurrentReadyMs)}; ${(result.loginsPerSecond as number).toFixed(1)} logins/s`,
      ...(result.findIssuedCertificateUs === undefined ? [] : [`store.findIssuedCertificate alone: ${(result.findIssuedCertificateUs as number).toFixed(1)} µs per call`]),
    ].join('\n') + '\n',
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`login-bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
