/**
 * bench:cluster's broker for the idle-tunnel part: the whole broker
 * (startBroker: its store, the HTTPS API, the embedded gateway with its
 * store check at login and presence writes), in a process of its own so
 * that its memory is read apart from the load generator's and the
 * devices'. Forked by idle-tunnels.ts with --expose-gc and the data
 * directory in CERTUNNEL_BENCH_BROKER_DIR. It says "ready" with its API URL
 * and SSH port; on "settle" it collects garbage and answers with its
 * memory, the gateway's count of connected tunnels, the store's count of
 * devices online (presence) and its error log lines counted by message; it
 * closes and exits when the bench disconnects. Its log (warn and above)
 * goes to stderr as well.
 */
import { readdirSync } from 'node:fs';
import { Writable } from 'node:stream';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { loadConfig } from '../../../broker/compose/load-config.js';
import { startBroker } from '../../../broker/compose/start.js';

export interface BrokerChildReady {
  readonly type: 'ready';
  readonly apiUrl: string;
  readonly sshPort: number;
}

export interface BrokerChildSettled {
  readonly type: 'settled';
  readonly memory: NodeJS.MemoryUsage;
  readonly tunnelsConnected: number;
  /** Open file descriptors. */
  readonly fds: number;
  /** Devices the store says are online. */
  readonly onlineInStore: number;
  /** The broker's error log lines so far, by message. */
  readonly errors: Record<string, number>;
}

const dataDir = process.env.CERTUNNEL_BENCH_BROKER_DIR;
if (!dataDir) throw new Error('CERTUNNEL_BENCH_BROKER_DIR is not set');
const errors: Record<string, number> = {};
const logSink = new Writable({
  write(chunk: Buffer, _enc, cb) {
    process.stderr.write(chunk);
    for (const line of chunk.toString().split('\n').filter(Boolean)) {
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string };
        if (entry.level === 'error' || entry.level === 'fatal') errors[entry.msg ?? '?'] = (errors[entry.msg ?? '?'] ?? 0) + 1;
      } catch {
        // not a JSON line
      }
    }
    cb();
  },
});
const broker = await startBroker({ config: await loadConfig({ dataDir }), logger: createLogger('warn', logSink) });
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
process.on('message', (msg: { type: string }) => {
  if (msg.type !== 'settle') return;
  gc();
  gc();
  setTimeout(() => {
    void broker.store.countDevicesByStatus().then((counts) => {
      const answer: BrokerChildSettled = {
        type: 'settled', memory: process.memoryUsage(), tunnelsConnected: broker.ssh.statsSource?.stats().tunnelsConnected ?? -1,
        fds: readdirSync('/proc/self/fd').length, onlineInStore: counts.online, errors: { ...errors },
      };
      process.send?.(answer);
    });
  }, 500);
});
process.on('disconnect', () => void broker.close().finally(() => process.exit(0)));
process.send?.({ type: 'ready', apiUrl: broker.apiUrl, sshPort: broker.sshPort } satisfies BrokerChildReady);
