/**
 * npm run bench:cluster-revocation: how long a device's tunnel on node 1
 * survives its revocation through node 3, three real broker processes on
 * one throwaway PostgreSQL (testkit/cluster.ts), the periodic
 * reconciliation set to an hour so that only the events between nodes
 * (broker/compose/cluster-events.ts) can close it. For each round: enroll a
 * device through node 3, bring its tunnel up on node 1 with the real
 * `ssh -N -R`, revoke it through node 3's API and time, from the moment
 * the request is sent:
 *
 *   api       node 3's answer
 *   refused   127.0.0.1:<port> refuses connections (node 1 dropped the forward)
 *   exited    the device's ssh exited (node 1 closed the session)
 *
 * Also, after the rounds, how long until every node's KRL lists the last
 * device (ssh-keygen -Q). Probes are a connect every few milliseconds.
 *
 * Usage: npm run bench:cluster-revocation [-- --rounds 10 --json]
 */
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { apiRequest } from '../../api/index.js';
import { startTestCluster } from '../../testkit/cluster.js';
import { connectClusterDevice, enrollClusterDevice, nodeApi } from '../../testkit/cluster-device.js';
import { isListening, startDeviceService } from '../../testkit/gateway.js';
import { sshKeygen, withTempDir } from '../../testkit/openssh.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const ROUNDS = Number(arg('rounds') ?? 10);
const JSON_OUT = process.argv.includes('--json');
const DEADLINE_MS = 15_000;
const PROBE_EVERY_MS = 5;

interface Round {
  readonly apiMs: number;
  readonly refusedMs: number;
  readonly exitedMs: number;
}

function stats(values: readonly number[]): { median: number; p90: number; max: number } {
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { median: at(0.5), p90: at(0.9), max: s[s.length - 1]! };
}

async function until(cond: () => Promise<boolean> | boolean, t0: number): Promise<number> {
  while (!(await cond())) {
    if (performance.now() - t0 > DEADLINE_MS) throw new Error(`not within ${DEADLINE_MS} ms`);
    await new Promise((r) => setTimeout(r, PROBE_EVERY_MS));
  }
  return performance.now() - t0;
}

async function main(): Promise<void> {
  await withTempDir(async (dir) => {
    const cluster = await startTestCluster({ nodes: 3, dir, initArgs: ['--port-range', '24000-24999'], config: { ssh: { reconcileSeconds: 3600 } } });
    const service = await startDeviceService('bench\n');
    const rounds: Round[] = [];
    let krlMs: number;
    try {
      let lastCert = '';
      for (let r = 0; r < ROUNDS; r++) {
        const device = await enrollClusterDevice(cluster, 2, dir, `bench-${r}`);
        const ssh = await connectClusterDevice(cluster.nodes[0]!.broker.sshPort, dir, device, service);
        let exited = -1;
        const t0 = performance.now();
        void ssh.exited.then(() => (exited = performance.now() - t0));
        const api = apiRequest(nodeApi(cluster, 2), 'POST', `/v1/devices/${device.id}/revoke`, { reason: 'bench' }).then(() => performance.now() - t0);
        const refusedMs = await until(async () => !(await isListening(device.port)), t0);
        await until(() => exited >= 0, t0);
        rounds.push({ apiMs: await api, refusedMs, exitedMs: exited });
        lastCert = device.certPath;
        await ssh.stop();
      }
      const t0 = performance.now();
      for (const node of cluster.nodes) {
        await until(async () => {
          const q = await sshKeygen(['-Q', '-f', join(node.dataDir, 'revoked.krl'), lastCert]);
          return q.code !== 0 && /REVOKED/.test(q.stdout);
        }, t0);
      }
      krlMs = performance.now() - t0;
    } finally {
      await service.close();
      await cluster.stop();
    }
    const round = (n: number) => Math.round(n * 10) / 10;
    const summary = {
      rounds: rounds.length,
      apiMs: stats(rounds.map((r) => r.apiMs)),
      refusedMs: stats(rounds.map((r) => r.refusedMs)),
      exitedMs: stats(rounds.map((r) => r.exitedMs)),
      everyKrlAfterLastMs: round(krlMs),
    };
    if (JSON_OUT) {
      console.log(JSON.stringify({ ...summary, raw: rounds }, null, 2));
      return;
    }
    console.log(`cluster revocation: device on node 1, revoked through node 3, ${rounds.length} rounds (ms from the request)`);
    for (const k of ['apiMs', 'refusedMs', 'exitedMs'] as const) {
      const s = summary[k];
      console.log(`  ${k.padEnd(10)} median ${round(s.median)}  p90 ${round(s.p90)}  max ${round(s.max)}`);
    }
    console.log(`  every node's KRL listed the last device within ${summary.everyKrlAfterLastMs} ms of the checks starting`);
  });
}

await main();
