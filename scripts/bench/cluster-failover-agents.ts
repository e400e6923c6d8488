/**
 * A worker process of the cluster failover benchmark
 * (scripts/bench/cluster-failover.ts): runs a share of the fleet as
 * in-process agents (agent/agent.ts, the real ssh2 transport, the agent's
 * own endpoint rotation over the enrollment's `sshEndpoints`), so that the
 * bench process only watches. Agent i dials from 127.0.0.(1 + i % 250), as
 * a fleet spread over the internet does.
 *
 * Over the IPC channel (child_process.fork):
 *   in:  { type: 'start', agents: [{ index, stateDir }], servicePort }
 *        { type: 'stop' }   stops every agent, answers { type: 'stopped' }
 *   out: { type: 'event', index, event: 'connected' | 'lost' | 'failed', endpoint, code?, at }
 *        (at: ms since the epoch, sub-millisecond, comparable across processes)
 */
import { Agent, type AgentLogger } from '../../agent/agent.js';
import { parseAgentConfig } from '../../agent/config.js';
import { createSsh2Transport } from '../../agent/transport-ssh2.js';

export interface StartMessage {
  readonly type: 'start';
  readonly agents: ReadonlyArray<{ index: number; stateDir: string }>;
  readonly servicePort: number;
}

export interface AgentEvent {
  readonly type: 'event';
  readonly index: number;
  readonly event: 'connected' | 'lost' | 'failed';
  readonly endpoint: string | null;
  readonly code?: string;
  readonly at: number;
}

const now = (): number => performance.timeOrigin + performance.now();

function send(message: AgentEvent | { type: 'stopped' } | { type: 'error'; message: string }): void {
  if (process.connected) process.send?.(message);
}

/** The agent's log, reduced to the three events the bench times. */
function reporter(index: number): AgentLogger {
  const fields = (obj: object) => obj as { event?: string; endpoint?: string | null; code?: string };
  return {
    debug: () => undefined,
    info: (obj) => {
      const f = fields(obj);
      if (f.event === 'connected') send({ type: 'event', index, event: 'connected', endpoint: f.endpoint ?? null, at: now() });
    },
    warn: (obj) => {
      const f = fields(obj);
      if (f.event === 'tunnel_lost') send({ type: 'event', index, event: 'lost', endpoint: f.endpoint ?? null, code: f.code, at: now() });
      if (f.event === 'connect_failed') send({ type: 'event', index, event: 'failed', endpoint: f.endpoint ?? null, code: f.code, at: now() });
    },
    error: () => undefined,
  };
}

let agents: Agent[] = [];
let runs: Array<Promise<unknown>> = [];
const transport = createSsh2Transport();

function start(message: StartMessage): void {
  for (const { index, stateDir } of message.agents) {
    const config = parseAgentConfig({
      stateDir,
      services: { ssh: `127.0.0.1:${message.servicePort}`, http: `127.0.0.1:${message.servicePort}` },
      ssh: { bindAddress: `127.0.0.${1 + (index % 250)}` },
      connectTimeoutSeconds: 20,
    });
    const agent = new Agent({ config, transport, logger: reporter(index), writeStatus: false });
    agents.push(agent);
    runs.push(agent.run());
  }
}

async function stop(): Promise<void> {
  for (const agent of agents) agent.stop();
  await Promise.all(runs);
  agents = [];
  runs = [];
  send({ type: 'stopped' });
}

process.on('message', (message: StartMessage | { type: 'stop' }) => {
  if (message.type === 'start') start(message);
  else void stop().catch((err: unknown) => send({ type: 'error', message: String(err) }));
});
process.on('disconnect', () => {
  void stop().finally(() => process.exit(0));
});
