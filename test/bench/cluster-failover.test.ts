/**
 * The cluster failover benchmark (scripts/bench/cluster-failover.ts) runs
 * end to end with 6 agents, the heartbeat at 1 s and down after 3 s: both
 * phases (SIGKILL, then SIGTERM of the node holding the most tunnels) end
 * with every agent of that node connected elsewhere, the store agreeing
 * (all online, none on the stopped node, each on its agent's node), the
 * node listed down or stopped, and no agent of another node disturbed.
 * Checks outcomes only, never the figures.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface Phase {
  signal: string;
  victim: { tunnels: number };
  reconnectMs: { n: number } | null;
  movedTo: number[];
  disturbed: number;
  nodeListedAs: string;
  downCleared: number | null;
  afterSettle: { online: number; onNode: number; disagreeing: number };
}

test('the failover bench: every agent of the stopped node comes back elsewhere and the store agrees', async (t) => {
  t.timeout(300_000); // three brokers through tsx, a throwaway PostgreSQL, two phases, on a loaded 2-core box
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/bench/cluster-failover.ts', '--agents', '6', '--heartbeat', '1', '--down-after', '3', '--json'], { cwd: ROOT });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.is(code, 0, err);
  const report = JSON.parse(out) as { agents: number; phases: Phase[] };
  t.is(report.agents, 6);
  t.deepEqual(report.phases.map((p) => p.signal), ['SIGKILL', 'SIGTERM']);
  for (const p of report.phases) {
    t.true(p.victim.tunnels >= 2, p.signal); // the node holding the most of 6 tunnels over 3 nodes
    t.is(p.reconnectMs?.n, p.victim.tunnels, p.signal);
    t.is(p.movedTo.reduce((a, b) => a + b, 0), p.victim.tunnels, p.signal);
    t.is(p.disturbed, 0, p.signal);
    t.deepEqual(p.afterSettle, { online: 6, onNode: 0, disagreeing: 0 }, p.signal);
  }
  t.is(report.phases[0]!.nodeListedAs, 'down');
  t.is(report.phases[1]!.nodeListedAs, 'stopped');
});
