/**
 * The reconnect storm (testkit/reconnect-storm.ts), small: 20 agents (ssh2, one process)
 * connected to one broker process; the broker is killed and restarted; all
 * reconnect within their backoff bound, and the jitter spreads them out.
 * The control run without jitter shows the herd the jitter breaks up.
 * (The 200-agent version is the benchmark: npm run bench:storm.)
 */
import test from 'ava';
import { delayBound } from '../../agent/backoff.js';
import { formatStorm, runStorm } from '../../testkit/reconnect-storm.js';
import { freePool } from './net-fixtures.js';

const AGENTS = 20;
const BACKOFF = { baseMs: 500, capMs: 4000, minMs: 50 };

test('20 agents: all reconnect after a broker restart within the backoff cap; jitter spreads them, no jitter does not', async (t) => {
  const jittered = await runStorm({ agents: AGENTS, jitter: true, backoff: BACKOFF, portBase: (await freePool(2 * AGENTS + 2)).first, timeoutMs: 60_000 });
  t.log(formatStorm(jittered));
  // After the broker is back, every agent's next attempt is at most one capped delay away.
  t.true(jittered.allReconnectedMs <= delayBound(99, BACKOFF) + 5000, `${jittered.allReconnectedMs} ms`);
  t.true(jittered.peakPer100ms < AGENTS, 'not all in one 100 ms window');
  t.true(jittered.spreadMs >= 100, `spread ${jittered.spreadMs} ms`);

  const herd = await runStorm({ agents: AGENTS, jitter: false, backoff: BACKOFF, portBase: (await freePool(2 * AGENTS + 2)).first, timeoutMs: 60_000 });
  t.log(formatStorm(herd));
  t.true(herd.allReconnectedMs <= delayBound(99, BACKOFF) + 5000);
  t.true(herd.peakPer100ms > jittered.peakPer100ms, 'without jitter the fleet comes back in a tighter burst');
  t.true(herd.spreadMs < jittered.spreadMs);
});
