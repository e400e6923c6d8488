/**
 * A user CA rotation across two real `certunnel broker` nodes on one
 * PostgreSQL (issue #14): started through node 1, node 2 loads the next
 * key and acks (the rotation moves to learn only then), signs with the
 * next CA in learn and accepts a certificate of either CA on its gateway;
 * committed through node 2, node 1 writes the new CA into its own data
 * directory and both refuse the old CA's certificates. Waits are polls
 * with generous bounds.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { apiRequest, type RotationResponse, type RotationStatusResponse } from '../../api/index.js';
import { fingerprint, parseCertificateLine, parsePublicKey } from '../../ca/index.js';
import { startTestCluster } from '../../testkit/cluster.js';
import { connectClusterDevice, enrollClusterDevice, nodeApi, openClusterTunnel, type ClusterDevice } from '../../testkit/cluster-device.js';
import { startDeviceService } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';

const ENV = { CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS: '1', CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS: '5' };
const WAIT = 60_000;

const userCaOnDisk = async (dataDir: string) => fingerprint(parsePublicKey(await readFile(join(dataDir, 'ca', 'user_ca.pub'), 'utf8')));

test('ok/two nodes on PostgreSQL follow a user-ca rotation: start through node 1, learn once both acked, commit through node 2', async (t) => {
  await withTempDir(async (dir) => {
    const cluster = await startTestCluster({ nodes: 2, dir, env: ENV });
    const service = await startDeviceService('device\n');
    try {
      const [one, two] = [nodeApi(cluster, 0), nodeApi(cluster, 1)];
      const oldCa = await userCaOnDisk(cluster.nodes[0]!.dataDir);
      const old = await enrollClusterDevice(cluster, 1, dir, 'old-cert');
      t.is(fingerprint(parseCertificateLine(await readFile(old.certPath, 'utf8')).signatureKey), oldCa);

      const started = await apiRequest<RotationResponse>(one, 'POST', '/v1/rotations', { root: 'user-ca' });
      await waitFor(async () => (await apiRequest<RotationStatusResponse>(two, 'GET', '/v1/rotations/current')).rotation.phase === 'learn', 'learn', WAIT);
      const status = await apiRequest<RotationStatusResponse>(two, 'GET', '/v1/rotations/current');
      t.like(status.nodes, { acked: 2, up: 2, lagging: [] });

      // Node 2 signs with the next CA (it may take a poll to hear of learn); its gateway accepts both.
      let fresh: ClusterDevice | undefined;
      await waitFor(async () => {
        fresh = await enrollClusterDevice(cluster, 1, dir, `next-cert-${Date.now()}`);
        return fingerprint(parseCertificateLine(await readFile(fresh.certPath, 'utf8')).signatureKey) === started.rotation.next;
      }, 'node 2 to sign with the next CA', WAIT);
      for (const device of [old, fresh!]) {
        const ssh = await connectClusterDevice(cluster.nodes[1]!.broker.sshPort, dir, device, service);
        await ssh.stop();
      }

      const committed = await apiRequest<RotationResponse>(two, 'POST', '/v1/rotations/current/commit', { force: true });
      t.is(committed.rotation.id, started.rotation.id);
      for (const node of cluster.nodes) await waitFor(async () => (await userCaOnDisk(node.dataDir)) === started.rotation.next, `${node.dataDir} to hold the new CA`, WAIT);
      t.is(fingerprint(parsePublicKey(await readFile(join(cluster.nodes[0]!.dataDir, 'ca', `user_ca.pub.retired-${started.rotation.id}`), 'utf8'))), oldCa);
      for (const node of cluster.nodes) {
        // The snapshot swaps after the files: a login with the old CA's certificate is refused once it has.
        await waitFor(async () => {
          const ssh = await openClusterTunnel(node.broker.sshPort, dir, old, service);
          return (await ssh.exited) !== 0;
        }, `node ${node.dataDir} to refuse the old CA`, WAIT);
        const ssh = await connectClusterDevice(node.broker.sshPort, dir, fresh!, service);
        await ssh.stop();
      }
      const after = await enrollClusterDevice(cluster, 0, dir, 'after');
      t.is(fingerprint(parseCertificateLine(await readFile(after.certPath, 'utf8')).signatureKey), started.rotation.next);
    } finally {
      await service.close();
      await cluster.stop();
    }
  });
});
