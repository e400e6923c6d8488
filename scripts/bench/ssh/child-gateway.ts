/**
 * The embedded gateway (broker/ssh) in a process of its own, so that its
 * memory is read apart from the bench's: targets.ts forks this file with
 * --expose-gc and the user CA in CERTUNNEL_BENCH_GATEWAY. It says hello with
 * its port and host key; on "settle" it collects garbage and answers once
 * the heap has settled; it exits when the bench disconnects.
 */
import { createGateway } from '../../../broker/ssh/index.js';
import { formatPublicKey, generateKeyPair, parsePublicKey } from '../../../ca/index.js';
import { POOL } from './settings.js';
import type { ChildHello } from './targets.js';

const config = JSON.parse(process.env.CERTUNNEL_BENCH_GATEWAY ?? '{}') as { userCa: string };
const hostKey = generateKeyPair();
const silent = (): void => undefined;
const gateway = createGateway({
  hostKey,
  userCaKeys: [parsePublicKey(config.userCa)],
  portPool: POOL,
  isRevoked: () => false,
  clock: () => new Date(),
  audit: silent,
  logger: { info: silent, warn: silent, error: silent },
  // Every device connects from 127.0.0.1 here: lift the per-source bucket
  // (default 100 at once, then 10/s) and the unauthenticated cap.
  limits: { perIpBurst: 100_000, perIpRatePerSecond: 100_000, maxUnauthenticated: 10_000, earlyDropStart: 10_000, maxUnauthenticatedPerSource: 10_000 },
});
const { port } = await gateway.listen(0, '127.0.0.1');
const gc = (globalThis as { gc?: () => void }).gc;
process.on('message', (msg: { type: string }) => {
  if (msg.type === 'settle') {
    gc?.();
    gc?.();
    setTimeout(() => process.send?.({ type: 'settled', stats: gateway.stats() }), 300);
  }
});
process.on('disconnect', () => void gateway.close().finally(() => process.exit(0)));
process.send?.({ type: 'hello', port, hostKeyLine: formatPublicKey(hostKey.publicKey) } satisfies ChildHello & { type: string });
