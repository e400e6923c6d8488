/**
 * Nodes of a cluster as real broker processes on one throwaway PostgreSQL
 * (testkit/cluster.ts: nodes 2 and 3 made with `certunnel node token` and
 * `certunnel join`), heart-beating every second and down after 3 s
 * (CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS / _DOWN_AFTER_SECONDS): `certunnel
 * node list` shows three nodes up; node 3 killed (-9) is listed down once
 * its heartbeat is stale, and the presence row naming it is cleared, with
 * one node.down audit row; node 2 stopped cleanly is listed stopped. Waits
 * are generous polls, never timing assertions.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { apiRequest, type EnrollResponse, type ListAuditResponse, type ListNodesResponse, type MintTokensResponse, type NodeView } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { openStore } from '../../../broker/store/index.js';
import { runCli } from '../../../testkit/cli.js';
import { startTestCluster } from '../../../testkit/cluster.js';
import { withTempDir } from '../../../testkit/openssh.js';

const ENV = { CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS: '1', CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS: '3' };

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test('three nodes up; a killed one goes down and its presence is cleared; a stopped one is stopped; a joined node enrolls', async (t) => {
  t.timeout(600_000); // three brokers and two joins, each a process through tsx, on a loaded 2-core box
  await withTempDir(async (dir) => {
    const cluster = await startTestCluster({ nodes: 3, dir, initArgs: ['--port-range', '23000-23999'], env: ENV });
    const store = await openStore({ filename: join(dir, 'unused.sqlite'), databaseUrl: cluster.databaseUrl });
    try {
      const ids = await Promise.all(cluster.nodes.map(async (n) => (JSON.parse(await readFile(join(n.dataDir, 'node.json'), 'utf8')) as { id: string }).id));
      const api = (i: number) => ({ baseUrl: cluster.nodes[i]!.broker.apiUrl, pin: cluster.pin, apiKey: cluster.adminKey });
      const cliEnv = { CERTUNNEL_API_URL: cluster.nodes[0]!.broker.apiUrl, CERTUNNEL_API_PIN: cluster.pin, CERTUNNEL_API_KEY: cluster.adminKey };

      const listed = await runCli(['node', 'list', '--json'], cliEnv);
      t.is(listed.code, 0, listed.stderr);
      const nodes = (JSON.parse(listed.stdout) as ListNodesResponse).items;
      t.deepEqual(nodes.map((n) => n.id).sort(), [...ids].sort());
      t.true(nodes.every((n) => n.status === 'up'));
      for (const [i, id] of ids.entries()) {
        t.like(nodes.find((n) => n.id === id), { sshEndpoint: `127.0.0.1:${cluster.nodes[i]!.broker.sshPort}`, apiUrl: cluster.nodes[i]!.broker.apiUrl });
      }
      const table = await runCli(['node', 'list'], cliEnv);
      t.regex(table.stdout, /^ID\s+NAME\s+STATUS\s+SSHENDPOINT/m);

      // The joined node 2 enrolls, with node 1's host key and CA.
      const minted = await apiRequest<MintTokensResponse>(api(0), 'POST', '/v1/tokens', { count: 1 });
      const grant = await apiRequest<EnrollResponse>({ baseUrl: api(1).baseUrl, pin: cluster.pin }, 'POST', '/v1/enroll', {
        token: minted.tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'held-by-3',
      });
      t.is(grant.ssh.hostKey, (await readFile(join(cluster.nodes[0]!.dataDir, 'ssh', 'host_key.pub'), 'utf8')).split(' ').slice(0, 2).join(' '));
      // Presence naming node 3, as its gateway writes it.
      await store.setDeviceOnline(grant.deviceId, { online: true, since: new Date(), remoteAddr: '192.0.2.9', lastSeen: new Date(), node: ids[2] });
      t.like((await apiRequest<ListNodesResponse>(api(0), 'GET', '/v1/nodes')).items.find((n) => n.id === ids[2]), { devicesOnline: 1 });

      await cluster.nodes[2]!.broker.stop('SIGKILL');
      const down = await until('node 3 down', async () => {
        const n = (await apiRequest<ListNodesResponse>(api(0), 'GET', '/v1/nodes')).items.find((x) => x.id === ids[2]);
        return n?.status === 'down' ? n : undefined;
      });
      t.is(down.status, 'down');
      await until('node 3\'s presence cleared', async () => ((await store.findDevice(grant.deviceId))?.online === false ? true : undefined));
      t.like(await store.findDevice(grant.deviceId), { online: false, nodeId: null });
      const audit = await until('node.down audited', async () => {
        const page = await apiRequest<ListAuditResponse>(api(0), 'GET', '/v1/audit?action=node.down');
        return page.items.length > 0 ? page.items : undefined;
      });
      // Nodes 1 and 2 both saw it; one of them wrote it.
      await new Promise((r) => setTimeout(r, 3000));
      t.is((await apiRequest<ListAuditResponse>(api(0), 'GET', '/v1/audit?action=node.down')).items.length, 1);
      t.like(audit[0], { target: ids[2], details: { devicesCleared: 1 } });

      await cluster.nodes[1]!.broker.stop('SIGTERM');
      const statuses = await until('node 2 stopped', async () => {
        const items = (await apiRequest<ListNodesResponse>(api(0), 'GET', '/v1/nodes')).items;
        return items.find((n) => n.id === ids[1])?.status === 'stopped' ? items : undefined;
      });
      t.deepEqual(Object.fromEntries(statuses.map((n: NodeView) => [n.id, n.status])), { [ids[0]!]: 'up', [ids[1]!]: 'stopped', [ids[2]!]: 'down' });
    } finally {
      await store.close();
      await cluster.stop();
    }
  });
});
