/**
 * What an idle tunnel costs the server: ssh2 clients with the agent's
 * certificate shim (agent/ssh2-cert-auth.ts), many in the bench process,
 * each holding one bound forward of its own block, and the target's memory
 * read as their number grows.
 */
import { connect } from 'node:net';
import ssh2 from 'ssh2';
import { certificateAuthHandler } from '../../../agent/ssh2-cert-auth.js';
import { isListening } from '../../../testkit/conformance/client.js';
import { issueDevice, type DeviceFiles } from './devices.js';
import type { Rig } from './rig.js';
import { blockAt, IDLE_FIRST_BLOCK, IDLE_WAVE } from './settings.js';
import type { Target } from './targets.js';

export interface IdleResult {
  readonly tunnels: number;
  /** Per tunnel, over the baseline with one tunnel. */
  readonly rssKiB: number;
  readonly pssKiB: number;
  readonly processes: number;
}

/** CLIENT, as idle tunnel I, logs in as DEV and binds DEV's first port; connections to it go to the echo service. */
function openIdleTunnel(client: ssh2.Client, target: Target, dev: DeviceFiles, echoPort: number, i: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`idle tunnel ${i}: no answer in 60 s`)), 60_000);
    client.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`idle tunnel ${i}: ${err.message}`));
    });
    client.on('tcp connection', (_info, accept) => {
      const ch = accept();
      const s = connect(echoPort, '127.0.0.1');
      s.on('error', () => ch.close());
      ch.pipe(s).pipe(ch);
    });
    client.once('ready', () =>
      client.forwardIn('127.0.0.1', dev.block.first, (err) => {
        clearTimeout(timer);
        if (err) reject(new Error(`idle tunnel ${i}: forward refused: ${err.message}`));
        else resolve();
      }),
    );
    client.connect({
      host: '127.0.0.1',
      port: target.port,
      username: 'tunnel',
      hostVerifier: target.hostKeyCheck,
      authHandler: certificateAuthHandler(client, { username: 'tunnel', key: dev.key, certificate: dev.certLine }),
      readyTimeout: 60_000,
    });
  });
}

/** ssh2 clients (agent shim), each bound to its own block, IDLE_WAVE connecting at a time; memory at each of the run's idle steps. */
export async function measureIdle(rig: Rig, target: Target): Promise<IdleResult[]> {
  const clients: ssh2.Client[] = [];
  const connectOne = async (i: number): Promise<void> => {
    const dev = await issueDevice(rig, blockAt(IDLE_FIRST_BLOCK + i), false);
    const client = new ssh2.Client();
    clients.push(client);
    await openIdleTunnel(client, target, dev, rig.services.echo, i);
  };
  const openUpTo = async (n: number): Promise<void> => {
    let i = clients.length;
    const worker = async (): Promise<void> => {
      while (i < n) await connectOne(i++);
    };
    await Promise.all(Array.from({ length: IDLE_WAVE }, worker));
  };
  try {
    await openUpTo(1); // what every connection shares (code, crypto contexts) is not counted
    const base = await target.memory();
    const results: IdleResult[] = [];
    for (const n of rig.sizes.idleSteps) {
      await openUpTo(n);
      const m = await target.memory();
      results.push({ tunnels: n, rssKiB: (m.rssKiB - base.rssKiB) / (n - 1), pssKiB: (m.pssKiB - base.pssKiB) / (n - 1), processes: m.processes });
    }
    return results;
  } finally {
    for (const c of clients) c.end();
    await new Promise((r) => setTimeout(r, 1000));
    for (const c of clients) c.destroy();
  }
}

/** Waits until none of the first N idle-phase ports is listening (the sessions of the last target's idle clients are gone). */
export async function waitIdlePortsFree(n: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const busy = await Promise.all(Array.from({ length: n }, (_, k) => isListening(blockAt(IDLE_FIRST_BLOCK + k).first)));
    if (!busy.some(Boolean)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('idle-phase ports stayed busy after their clients ended');
}
