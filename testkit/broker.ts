/**
 * A real broker for tests: a fresh data directory (SQLite file, CAs, keys,
 * TLS), HTTPS and SSH on ephemeral 127.0.0.1 ports, a controllable clock,
 * torn down in finally (got's withServer, for certunnel).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { type ApiClientOptions, apiRequest } from '../api/index.js';
import { loadConfig } from '../broker/compose/load-config.js';
import { dataPaths, initDataDir, type InitResult } from '../broker/compose/data-dir.js';
import { createLogger } from '../broker/telemetry/logger.js';
import { startBroker, type RunningBroker } from '../broker/compose/start.js';
import type { TrustRoots } from '../broker/core/trust-roots.js';
import { TEST_PORTS_FIRST, TEST_PORTS_LAST } from './gateway.js';

export interface TestClock {
  now(): Date;
  /** Moves the broker's clock (not the machine's) by ms. */
  advance(ms: number): void;
}

export function testClock(): TestClock {
  let offset = 0;
  return {
    now: () => new Date(Date.now() + offset),
    advance: (ms) => {
      offset += ms;
    },
  };
}

export interface TestBroker {
  readonly dir: string;
  readonly broker: RunningBroker;
  readonly init: InitResult;
  readonly clock: TestClock;
  /** API client options with the admin key and the pin. */
  readonly admin: ApiClientOptions;
  /** Same URL and pin, no key. */
  readonly anonymous: ApiClientOptions;
  /** Log lines the broker wrote (JSON), to check that secrets never appear. */
  readonly logs: string[];
  call<T>(options: ApiClientOptions, method: string, path: string, body?: unknown): Promise<T>;
  apiKey(role: 'admin' | 'operator' | 'provisioner'): Promise<ApiClientOptions>;
}

export interface BrokerFixtureOptions {
  readonly config?: Record<string, unknown>;
  readonly logLevel?: string;
  /** The broker's TrustRoots, made from its fresh data directory (testkit/trust.ts dataDirTrust); absent: start's own. */
  readonly trustRoots?: (dir: string) => Promise<TrustRoots>;
}

export async function withBroker<T>(fn: (b: TestBroker) => Promise<T>, options: BrokerFixtureOptions = {}): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-broker-'));
  const logs: string[] = [];
  let broker: RunningBroker | undefined;
  try {
    // Each broker gets its own random window of the test port range, so that
    // brokers in concurrent test workers do not hand out the same tunnel ports.
    const windowFirst = TEST_PORTS_FIRST + 2 * Math.floor(Math.random() * ((TEST_PORTS_LAST - TEST_PORTS_FIRST - 1000) / 2));
    const base = { api: { listen: '127.0.0.1:0' }, ssh: { listen: '127.0.0.1:0' }, ports: { first: windowFirst, last: windowFirst + 999 } };
    const config = { ...base, ...options.config, api: { ...base.api, ...(options.config?.api as object) }, ssh: { ...base.ssh, ...(options.config?.ssh as object) } };
    const init = await initDataDir({ dir, config });
    const clock = testClock();
    const logger = createLogger(options.logLevel ?? 'debug', new Writable({ write(chunk, _enc, cb) { logs.push(String(chunk)); cb(); } }));
    const trustRoots = await options.trustRoots?.(dir);
    broker = await startBroker({ config: await loadConfig({ dataDir: dir }), logger, clock: clock.now, ...(trustRoots ? { trustRoots } : {}) });
    const anonymous: ApiClientOptions = { baseUrl: broker.apiUrl, pin: init.apiPin };
    const admin: ApiClientOptions = { ...anonymous, apiKey: init.adminKey };
    const running = broker;
    return await fn({
      dir, broker: running, init, clock, admin, anonymous, logs,
      call: (opts, method, path, body) => apiRequest(opts, method, path, body),
      apiKey: async (role) => {
        const res = await apiRequest<{ key: string }>(admin, 'POST', '/v1/apikeys', { role, name: `test-${role}` });
        return { ...anonymous, apiKey: res.key };
      },
    });
  } finally {
    await broker?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export { dataPaths };
