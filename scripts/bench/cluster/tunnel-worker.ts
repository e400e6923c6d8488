/**
 * bench:cluster's devices for the idle-tunnel part: a process holding many
 * ssh2 clients, each logged in with its device certificate through the
 * agent's certificate shim (agent/ssh2-cert-auth.ts), the broker's host
 * key pinned, and its remote forward bound as the agent binds it
 * (TUNNEL_HOST, the block's first port), retried with backoff as the
 * agent retries (a loaded broker drops logins past its grace time); then
 * idle. A connection to a
 * forwarded port is echoed, so that the bench can check tunnels end to end.
 * Each device dials from its own loopback address (127.77.x.y), as devices
 * behind different addresses would: the gateway's per-address connection
 * rate limit applies as it would in a fleet.
 *
 * Forked by idle-tunnels.ts; messages in: "open" (the devices), "status";
 * out: "hello" (loaded), "opened", "status". Exits when the bench disconnects.
 */
import { createPrivateKey } from 'node:crypto';
import { connect } from 'node:net';
import ssh2 from 'ssh2';
import { certificateAuthHandler } from '../../../agent/ssh2-cert-auth.js';
import { TUNNEL_HOST } from '../../../api/index.js';
import { parsePublicKey, publicKeyBlob, rawPublicKeyOf } from '../../../ca/index.js';

export interface TunnelDevice {
  /** PKCS#8 DER, base64. */
  readonly privateKey: string;
  readonly certificate: string;
  readonly port: number;
  readonly localAddress: string;
}

export interface OpenMessage {
  readonly type: 'open';
  readonly sshPort: number;
  readonly hostKey: string;
  readonly devices: readonly TunnelDevice[];
  /** Logins in flight at once in this worker. */
  readonly inFlight: number;
}

export interface OpenedMessage {
  readonly type: 'opened';
  readonly open: number;
  /** Why each device that never came up failed its last attempt. */
  readonly failures: readonly string[];
  /** Their ports (left out of the end-to-end check). */
  readonly failedPorts: readonly number[];
  /** Attempts beyond the first, over all devices. */
  readonly retries: number;
  readonly seconds: number;
}

/** Attempts per device before it counts as failed; between them, the agent's kind of backoff (exponential, full jitter). */
const ATTEMPTS = 5;
const BACKOFF_BASE_MS = 1000;

export interface StatusMessage {
  readonly type: 'status';
  readonly open: number;
  /** Tunnels that closed after they were up (the broker dropped them). */
  readonly lost: number;
  readonly echoedConnections: number;
  readonly rssKiB: number;
}

const clients: ssh2.Client[] = [];
let open = 0;
let lost = 0;
let echoed = 0;

function openTunnel(m: OpenMessage, d: TunnelDevice, pinned: Buffer): Promise<void> {
  const privateKey = createPrivateKey({ key: Buffer.from(d.privateKey, 'base64'), format: 'der', type: 'pkcs8' });
  const key = { privateKey, publicKey: rawPublicKeyOf(privateKey) };
  const client = new ssh2.Client();
  clients.push(client);
  return new Promise<void>((resolve, reject) => {
    let up = false;
    const timer = setTimeout(() => {
      client.destroy();
      reject(new Error(`port ${d.port}: not bound within 120 s`));
    }, 120_000);
    client.on('error', (err) => {
      clearTimeout(timer);
      if (!up) reject(new Error(`port ${d.port}: ${err.message}`));
    });
    client.once('close', () => {
      clearTimeout(timer);
      if (up) {
        open--;
        lost++;
      } else reject(new Error(`port ${d.port}: closed before the forward was bound`));
    });
    client.on('tcp connection', (_info, accept) => {
      echoed++;
      const ch = accept();
      ch.on('data', (b: Buffer) => ch.write(b));
      ch.on('end', () => ch.end());
    });
    client.once('ready', () =>
      client.forwardIn(TUNNEL_HOST, d.port, (err) => {
        clearTimeout(timer);
        if (err) return reject(new Error(`port ${d.port}: forward refused: ${err.message}`));
        up = true;
        open++;
        resolve();
      }),
    );
    const sock = connect({ host: '127.0.0.1', port: m.sshPort, localAddress: d.localAddress });
    sock.on('error', () => undefined); // reported through the client
    client.connect({
      sock,
      username: 'tunnel',
      hostVerifier: (offered: Buffer) => offered.equals(pinned),
      authHandler: certificateAuthHandler(client, { username: 'tunnel', key, certificate: d.certificate }),
      readyTimeout: 120_000,
    });
  });
}

async function openAll(m: OpenMessage): Promise<void> {
  const pinned = publicKeyBlob(parsePublicKey(m.hostKey));
  const failures: string[] = [];
  const failedPorts: number[] = [];
  let retries = 0;
  const started = performance.now();
  let next = 0;
  const attempt = async (d: TunnelDevice): Promise<void> => {
    for (let k = 0; ; k++) {
      try {
        return await openTunnel(m, d, pinned);
      } catch (err) {
        if (k + 1 >= ATTEMPTS) {
          failures.push(err instanceof Error ? err.message : String(err));
          failedPorts.push(d.port);
          return;
        }
        retries++;
        await new Promise((r) => setTimeout(r, Math.random() * BACKOFF_BASE_MS * 2 ** k));
      }
    }
  };
  await Promise.all(Array.from({ length: m.inFlight }, async () => {
    while (next < m.devices.length) await attempt(m.devices[next++]!);
  }));
  const answer: OpenedMessage = { type: 'opened', open, failures, failedPorts, retries, seconds: (performance.now() - started) / 1000 };
  process.send?.(answer);
}

process.on('message', (m: OpenMessage | { type: 'status' }) => {
  if (m.type === 'open') void openAll(m);
  else if (m.type === 'status') {
    const answer: StatusMessage = { type: 'status', open, lost, echoedConnections: echoed, rssKiB: Math.round(process.memoryUsage.rss() / 1024) };
    process.send?.(answer);
  }
});
process.send?.({ type: 'hello' });
process.on('disconnect', () => {
  for (const c of clients) c.destroy();
  process.exit(0);
});
