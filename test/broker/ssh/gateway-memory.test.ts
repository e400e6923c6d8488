/**
 * The memory an idle tunnel costs the gateway, with OpenSSH clients as the
 * devices. Its own file, so that its process runs nothing else meanwhile.
 * sshd needs 2-6 MB per connection; the goal is at most a tenth of that.
 */
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { PortBlock } from '../../../ca/index.js';
import { freePortBlock, startDeviceService, startGatewayEnv } from '../../../testkit/gateway.js';
import { spawnSsh, waitFor, type SshProcess } from '../../../testkit/ssh-client.js';

test('an idle tunnel costs the gateway a few tens of KB (sshd: 2-6 MB per connection)', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const retained = (): number => {
    gc();
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.external;
  };
  const N = 30;
  const env = await startGatewayEnv();
  const svc = await startDeviceService();
  const started: SshProcess[] = [];
  try {
    const blocks: PortBlock[] = [];
    while (blocks.length < N + 1) {
      const b = await freePortBlock(1);
      if (!blocks.some((x) => x.first === b.first)) blocks.push(b);
    }
    const open = async (i: number): Promise<void> => {
      const { key, cert } = env.deviceCert({ deviceId: `dev-${i}`, block: blocks[i]! });
      const id = await env.identity(`dev-${i}`, key, cert);
      started.push(spawnSsh([...env.args(id), '-N', '-R', `127.0.0.1:${blocks[i]!.first}:127.0.0.1:${svc.port}`]));
    };
    // One tunnel first, so that what every connection shares (ssh2's code, crypto contexts) is not counted.
    await open(0);
    await waitFor(() => env.gateway.stats().forwardsActive === 1, 'the first tunnel');
    const before = retained();
    for (let i = 1; i <= N; i++) await open(i);
    await waitFor(() => env.gateway.stats().forwardsActive === N + 1, 'all tunnels', 60_000);
    const perTunnel = (retained() - before) / N;
    t.log(`${(perTunnel / 1024).toFixed(1)} KiB of heap + external memory per idle tunnel`);
    t.true(perTunnel > 1024, 'the measurement saw the tunnels');
    t.true(perTunnel < 200 * 1024, 'at most a tenth of the 2 MB sshd needs at the least');
  } finally {
    await Promise.all(started.map((p) => p.stop()));
    await env.close();
    await svc.close();
  }
});
