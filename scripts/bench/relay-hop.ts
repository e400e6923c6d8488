/**
 * `npm run bench:relay`: what the node-to-node link costs (docs/cluster.md,
 * "Reaching devices through any node"). A real broker (node B, embedded
 * gateway, cluster.internalListen) holds the real `ssh -R` tunnels of two
 * devices: one leads to a TCP echo service, one to a source that sends
 * bytes as fast as they are read. The same device port is reached two ways:
 *
 * - direct: B's own gateway opens a channel into the tunnel (what a local
 *   operator connection or B's HTTP proxy gets);
 * - relayed: a registered node A, in this process, asks B over the link
 *   (relay-client.ts → relay-server.ts → the same channel).
 *
 * The difference is the extra hop: one more SSH connection (encrypt on A,
 * decrypt on B and back) and a loopback TCP hop. Both ends run on this
 * machine, so the hop's CPU on both nodes is in the figures.
 *
 * Usage: npm run bench:relay [-- --round-trips 2000 --mib 64 --opens 200 --rounds 5]
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { parseArgs } from 'node:util';
import { formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, parsePublicKey, signNodeCert } from '../../ca/index.js';
import { loadNodeIdentity, newNodeIdentity } from '../../broker/compose/node-identity.js';
import { RelayClient } from '../../broker/ssh/index.js';
import { withFleet } from '../../testkit/operator-fixture.js';

const { values } = parseArgs({
  options: { 'round-trips': { type: 'string', default: '2000' }, mib: { type: 'string', default: '64' }, opens: { type: 'string', default: '200' }, rounds: { type: 'string', default: '5' } },
});
const ROUND_TRIPS = Number(values['round-trips']);
const MIB = Number(values.mib);
const OPENS = Number(values.opens);
const ROUNDS = Number(values.rounds);
const CHUNK = Buffer.alloc(64 * 1024, 0x5a);

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

/** Echo, or a source writing MIB MiB then ending. */
function service(kind: 'echo' | 'source'): Server {
  return createServer((socket: Socket) => {
    socket.on('error', () => undefined);
    if (kind === 'echo') return void socket.pipe(socket);
    let left = MIB * 16;
    const pump = (): void => {
      while (left > 0) {
        left--;
        if (!socket.write(CHUNK)) return void socket.once('drain', pump);
      }
      socket.end();
    };
    pump();
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Round trips of 64 bytes on one stream: per-trip milliseconds, sorted. */
async function roundTrips(stream: Duplex, n: number): Promise<number[]> {
  const payload = Buffer.alloc(64, 0x61);
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    await new Promise<void>((resolve) => {
      let got = 0;
      const onData = (c: Buffer): void => {
        got += c.length;
        if (got >= payload.length) {
          stream.off('data', onData);
          resolve();
        }
      };
      stream.on('data', onData);
      stream.write(payload);
    });
    times.push(performance.now() - started);
  }
  stream.destroy();
  return times.sort((a, b) => a - b);
}

/** MB/s reading the source to its end. */
async function drain(stream: Duplex): Promise<number> {
  const started = performance.now();
  let bytes = 0;
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer) => (bytes += c.length));
    stream.once('end', resolve);
    stream.once('error', reject);
    stream.end();
  });
  const seconds = (performance.now() - started) / 1000;
  stream.destroy();
  return bytes / 1e6 / seconds;
}

async function main(): Promise<void> {
  const echo = service('echo');
  const source = service('source');
  const [echoPort, sourcePort] = [await listen(echo), await listen(source)];
  await withFleet(async (f) => {
    const echoDev = await f.enroll('bench-echo', { connect: true, httpTarget: echoPort });
    const sourceDev = await f.enroll('bench-source', { connect: true, httpTarget: sourcePort });
    const presence = f.b.broker.ssh.presence!;
    const nodeB = await loadNodeIdentity({ node: join(f.b.dir, 'node.json') });
    const row = (await f.b.broker.store.findNode(nodeB.id))!;
    const [host, port] = row.internalAddress!.split(':');
    const peer = { id: nodeB.id, host: host!, port: Number(port), relayKey: parsePublicKey(row.relayKey!) };
    const ca = await loadKeyPair(join(f.b.dir, 'ca', 'user_ca'));
    const a = newNodeIdentity('bench-node-a');
    const aKey = generateKeyPair();
    await f.b.broker.store.registerNode({ id: a.id, name: a.name, sshEndpoint: '127.0.0.1:1', apiUrl: null, internalAddress: '127.0.0.1:1', relayKey: formatPublicKey(aKey.publicKey), version: 'bench', startedAt: new Date() });
    const cert = signNodeCert({ ca, publicKey: aKey.publicKey, nodeId: a.id, serial: await f.b.broker.store.nextSerial(), now: new Date() });
    const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };
    const client = new RelayClient({
      nodeId: a.id, key: aKey, certificateLine: () => formatCertificate(cert, cert.keyId), clock: () => new Date(), logger: quiet,
      certDeps: { trustedCaKeys: [ca.publicKey], isRevoked: () => false },
    });
    const origin = { address: '127.0.0.1', port: 0 };
    const ways = {
      direct: (dev: typeof echoDev) => presence.dial!(dev.grant.deviceId, dev.grant.ports.first + 1, origin),
      relayed: (dev: typeof echoDev) => client.dial(peer, dev.grant.deviceId, dev.grant.ports.first + 1, origin),
    };
    try {
      // Warm up both (the link's SSH connection is made once and kept).
      for (const open of Object.values(ways)) await roundTrips(await open(echoDev), 50);
      // Alternating rounds, so that the machine's load (and JIT warm-up) falls on both paths alike.
      const samples: Record<string, { rtt: number[]; opens: number[]; mbps: number[] }> = { direct: { rtt: [], opens: [], mbps: [] }, relayed: { rtt: [], opens: [], mbps: [] } };
      for (let round = 0; round < ROUNDS; round++) {
        for (const [name, open] of Object.entries(ways)) {
          const s = samples[name]!;
          s.rtt.push(...(await roundTrips(await open(echoDev), Math.ceil(ROUND_TRIPS / ROUNDS))));
          for (let i = 0; i < Math.ceil(OPENS / ROUNDS); i++) {
            const started = performance.now();
            await roundTrips(await open(echoDev), 1);
            s.opens.push(performance.now() - started);
          }
          s.mbps.push(await drain(await open(sourceDev)));
        }
      }
      const results: Record<string, Record<string, number>> = {};
      for (const [name, s] of Object.entries(samples)) {
        for (const list of [s.rtt, s.opens, s.mbps]) list.sort((x, y) => x - y);
        results[name] = {
          rttMedianMs: percentile(s.rtt, 0.5), rttP99Ms: percentile(s.rtt, 0.99), openFirstByteMedianMs: percentile(s.opens, 0.5), openFirstByteP99Ms: percentile(s.opens, 0.99),
          throughputMBps: percentile(s.mbps, 0.5),
        };
      }
      const fmt = (n: number): string => n.toFixed(3);
      console.log(`relay hop: ${ROUND_TRIPS} round trips of 64 B on one stream, ${OPENS} new streams (open + first round trip), ${MIB} MiB read per round, ${ROUNDS} alternating rounds (medians); node ${process.version}, one machine`);
      console.log('| path | RTT median (ms) | RTT p99 (ms) | open + 1st RTT median (ms) | open + 1st RTT p99 (ms) | throughput (MB/s) |');
      console.log('|---|---|---|---|---|---|');
      for (const [name, r] of Object.entries(results)) {
        console.log(`| ${name} | ${fmt(r.rttMedianMs!)} | ${fmt(r.rttP99Ms!)} | ${fmt(r.openFirstByteMedianMs!)} | ${fmt(r.openFirstByteP99Ms!)} | ${r.throughputMBps!.toFixed(1)} |`);
      }
      const d = results.direct!;
      const r = results.relayed!;
      console.log(`added by the hop: RTT median +${fmt(r.rttMedianMs! - d.rttMedianMs!)} ms, open+1st RTT median +${fmt(r.openFirstByteMedianMs! - d.openFirstByteMedianMs!)} ms, throughput ${((r.throughputMBps! / d.throughputMBps!) * 100).toFixed(0)}% of direct`);
      console.log(JSON.stringify({ bench: 'relay-hop', roundTrips: ROUND_TRIPS, opens: OPENS, mib: MIB, rounds: ROUNDS, results }));
    } finally {
      client.close();
    }
  }, { config: { cluster: { internalListen: '127.0.0.1:0' } }, logLevel: 'warn' });
  echo.close();
  source.close();
}

await main();
