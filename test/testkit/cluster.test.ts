/** testkit/cluster.ts: two broker processes on one PostgreSQL share the fleet (what one node writes, the other reads). */
import test from 'ava';
import { apiRequest, type DeviceView, type EnrollResponse, type MintTokensResponse } from '../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { startTestCluster } from '../../testkit/cluster.js';
import { withTempDir } from '../../testkit/openssh.js';

test('two nodes on one database: a token minted on node 1 enrolls on node 2, and node 1 lists the device', async (t) => {
  t.timeout(300_000); // node 2 is made with two CLI processes (node token, join) and both brokers start through tsx
  await withTempDir(async (dir) => {
    const cluster = await startTestCluster({ nodes: 2, dir, initArgs: ['--port-range', '22000-22999'] });
    try {
      const [a, b] = cluster.nodes.map((n) => ({ baseUrl: n.broker.apiUrl, pin: cluster.pin, apiKey: cluster.adminKey }));
      const minted = await apiRequest<MintTokensResponse>(a!, 'POST', '/v1/tokens', { count: 1 });
      const grant = await apiRequest<EnrollResponse>({ baseUrl: b!.baseUrl, pin: cluster.pin }, 'POST', '/v1/enroll', {
        token: minted.tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'shared-1',
      });
      t.is(grant.ports.first, 22000);
      const seen = await apiRequest<DeviceView>(a!, 'GET', `/v1/devices/${grant.deviceId}`);
      t.is(seen.name, 'shared-1');
    } finally {
      await cluster.stop();
    }
  });
});
