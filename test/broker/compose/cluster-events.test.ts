/**
 * broker/compose/cluster-events.ts with real processes: three broker nodes
 * on one throwaway PostgreSQL, devices holding real `ssh -N -R` tunnels.
 * The periodic reconciliation is set to an hour, so that only the events
 * between nodes (or the catch-up of a node that missed them) can close a
 * tunnel within the tests' generous bounds. Timing is not asserted: the
 * latency is measured by scripts/bench/cluster-revocation.ts.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { chmod, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { apiRequest, ApiError, type MintTokensResponse } from '../../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { connectClusterDevice, enrollClusterDevice, nodeApi as api, openClusterTunnel, type ClusterDevice } from '../../../testkit/cluster-device.js';
import { startTestCluster, type TestCluster } from '../../../testkit/cluster.js';
import { exchange, isListening, startDeviceService, type DeviceService } from '../../../testkit/gateway.js';
import { sshKeygen, withTempDir } from '../../../testkit/openssh.js';
import { startPostgres, type PostgresCluster } from '../../../testkit/postgres.js';
import { dataPaths } from '../../../testkit/broker.js';
import { ensureGatewayUsers } from '../../../testkit/conformance/sshd-driver.js';
import { startSshd } from '../../../testkit/sshd.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { OPENSSH_FILES } from '../../../broker/openssh/config-files.js';
import { waitFor, type SshProcess } from '../../../testkit/ssh-client.js';

/** Generous: a loaded 2-core box; the figure that matters is measured by the benchmark. */
const CLOSE_BOUND_MS = 10_000;
const NO_RECONCILIATION = { ssh: { reconcileSeconds: 3600 } };
const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;

let postgres: PostgresCluster;
test.before(async () => {
  postgres = await startPostgres();
});
test.after.always(async () => {
  await postgres?.stop();
});

const enroll = enrollClusterDevice;
const tunnel = (c: TestCluster, i: number, dir: string, device: ClusterDevice, service: DeviceService, options: { exitOnForwardFailure?: boolean } = {}): Promise<SshProcess> =>
  openClusterTunnel(c.nodes[i]!.broker.sshPort, dir, device, service, options);
const connected = (c: TestCluster, i: number, dir: string, device: ClusterDevice, service: DeviceService): Promise<SshProcess> =>
  connectClusterDevice(c.nodes[i]!.broker.sshPort, dir, device, service);

/** Resolves true if P settles within MS. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const done = p.then(() => true as const);
  try {
    return await Promise.race([done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function krlRevokes(krlPath: string, certPath: string): Promise<boolean> {
  const r = await sshKeygen(['-Q', '-f', krlPath, certPath]);
  return r.code !== 0 && /REVOKED/.test(r.stdout);
}

async function sql<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

async function nodeId(c: TestCluster, i: number): Promise<string> {
  return (JSON.parse(await readFile(join(c.nodes[i]!.dataDir, 'node.json'), 'utf8')) as { id: string }).id;
}

async function presence(c: TestCluster, deviceId: string): Promise<{ online: boolean; node_id: string | null }> {
  const [row] = await sql<{ online: boolean; node_id: string | null }>(c.databaseUrl, 'SELECT online, node_id FROM devices WHERE id = $1', [deviceId]);
  return row!;
}

async function withCluster(t: { teardown(fn: () => Promise<void>): void }, fn: (c: TestCluster, dir: string) => Promise<void>, options: { ports: string }): Promise<void> {
  await withTempDir(async (dir) => {
    const c = await startTestCluster({ nodes: 3, dir, postgres, initArgs: ['--port-range', options.ports], config: NO_RECONCILIATION });
    try {
      await fn(c, dir);
    } finally {
      await c.stop();
    }
  });
  void t;
}

test.serial('a device tunnelled on node 1, revoked through node 3: its tunnel on node 1 closes and every node\'s KRL lists it', async (t) => {
  await withCluster(t, async (c, dir) => {
    const service = await startDeviceService('revoke-me\n');
    const device = await enroll(c, 1, dir, 'revoke-me');
    const ssh = await connected(c, 0, dir, device, service);
    try {
      t.is((await exchange(device.port, 'hi')).toString(), 'revoke-me\nhi');
      await apiRequest(api(c, 2), 'POST', `/v1/devices/${device.id}/revoke`, { reason: 'test' });
      t.true(await within(ssh.exited, CLOSE_BOUND_MS), 'node 1 closed the tunnel of a device revoked through node 3');
      for (const [i, node] of c.nodes.entries()) {
        await waitFor(() => krlRevokes(join(node.dataDir, 'revoked.krl'), device.certPath), `node ${i + 1}'s KRL to list the certificate`, CLOSE_BOUND_MS)
          .then(() => t.pass(), () => t.fail(`node ${i + 1}'s KRL does not list the revoked certificate`));
      }
    } finally {
      await ssh.stop();
      await service.close();
    }
  }, { ports: '23000-23099' });
});

test.serial('takeover across nodes: the device connects to node 2 while node 1 holds a stale session; node 1 closes it, presence says node 2', async (t) => {
  await withCluster(t, async (c, dir) => {
    const service = await startDeviceService('moving\n');
    const device = await enroll(c, 0, dir, 'moving');
    const stale = await connected(c, 0, dir, device, service);
    // On one machine every node binds the device's ports on the same loopback: the new session cannot forward until
    // the stale one is gone, so it does not exit on that failure (on separate hosts it would simply bind).
    const fresh = await tunnel(c, 1, dir, device, service, { exitOnForwardFailure: false });
    try {
      const closed = await within(stale.exited, CLOSE_BOUND_MS);
      if (!closed) t.log(`fresh: ${fresh.stderr()}\nnode 1: ${c.nodes[0]!.broker.stderr()}\nnode 2: ${c.nodes[1]!.broker.stderr()}`);
      t.true(closed, 'node 1 closed the stale session');
      const node2 = await nodeId(c, 1);
      await waitFor(async () => (await presence(c, device.id)).node_id === node2, 'presence on node 2', CLOSE_BOUND_MS)
        .then(() => t.pass(), async () => t.fail(`presence is ${JSON.stringify(await presence(c, device.id))}, not node 2 (${node2})`));
      t.true((await presence(c, device.id)).online);
      // The device's next session on node 2 gets its port.
      await fresh.stop();
      const again = await connected(c, 1, dir, device, service);
      t.is((await exchange(device.port, 'x')).toString(), 'moving\nx');
      await again.stop();
    } finally {
      await stale.stop();
      await fresh.stop();
      await service.close();
    }
  }, { ports: '23100-23199' });
});

test.serial('the database goes away: the live tunnel stays up, a known device logs in again on the same node, an unknown one does not, enroll is STORE_UNAVAILABLE', async (t) => {
  await withCluster(t, async (c, dir) => {
    const service = await startDeviceService('steady\n');
    const known = await enroll(c, 0, dir, 'steady');
    const stranger = await enroll(c, 0, dir, 'stranger');
    const minted = await apiRequest<MintTokensResponse>(api(c, 0), 'POST', '/v1/tokens', { count: 1 });
    let ssh = await connected(c, 0, dir, known, service);
    // The stranger has only ever logged in on node 2.
    const elsewhere = await connected(c, 1, dir, stranger, service);
    await elsewhere.stop();
    await waitFor(async () => !(await isListening(stranger.port)), 'the stranger tunnel to close');
    await c.postgres.pause();
    try {
      await new Promise((r) => setTimeout(r, 2000));
      t.is((await exchange(known.port, 'still')).toString(), 'steady\nstill', 'the live tunnel stays up');
      await ssh.stop();
      await waitFor(async () => !(await isListening(known.port)), 'the old tunnel to close');
      ssh = await connected(c, 0, dir, known, service).catch((err: unknown) => {
        t.fail(`the known device could not log in again during the outage: ${String(err)}`);
        return ssh;
      });
      t.true(await isListening(known.port), 'the known device tunnels again from what node 1 already knows');
      const refused = await tunnel(c, 0, dir, stranger, service);
      t.not(await refused.exited, 0, 'a device node 1 never verified gets nothing during the outage');
      const code = await apiRequest({ baseUrl: c.nodes[0]!.broker.apiUrl, pin: c.pin }, 'POST', '/v1/enroll', {
        token: minted.tokens[0]!.token, publicKey: formatPublicKey(generateKeyPair().publicKey), name: 'during-outage',
      }).then(() => 'NONE', (err: unknown) => (err instanceof ApiError ? err.code : String(err)));
      t.is(code, 'STORE_UNAVAILABLE');
    } finally {
      await c.postgres.resume();
      await ssh.stop();
      await service.close();
    }
    // Everything resumes: enrolment works again through the same node.
    await waitFor(async () => {
      const m = await apiRequest<MintTokensResponse>(api(c, 0), 'POST', '/v1/tokens', { count: 1 }).catch(() => null);
      return m !== null;
    }, 'the API to work again', 30_000);
  }, { ports: '23200-23299' });
});

test.serial('a revocation committed while node 1 was not listening is applied when it is back (its listening backend terminated)', async (t) => {
  await withCluster(t, async (c, dir) => {
    const service = await startDeviceService('missed\n');
    const device = await enroll(c, 2, dir, 'missed');
    const ssh = await connected(c, 0, dir, device, service);
    try {
      const node1 = await nodeId(c, 0);
      await waitFor(async () => (await sql(c.databaseUrl, 'SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [`certunnel-events:${node1}`])).length > 0,
        'node 1 to listen', CLOSE_BOUND_MS).catch(() => t.fail('node 1 has no listening connection'));
      // One transaction: node 1's listening backend is terminated (waiting until it is gone), then the device is revoked
      // as the API would revoke it; the notification goes out at commit, while node 1 is not listening.
      const client = new pg.Client({ connectionString: c.databaseUrl });
      await client.connect();
      try {
        await client.query('BEGIN');
        await client.query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1", [`certunnel-events:${node1}`]);
        const now = Date.now();
        await client.query("UPDATE devices SET status = 'revoked', revoked_at = $2, revoked_by = 'test', revoke_reason = 'missed' WHERE id = $1", [device.id, now]);
        await client.query('UPDATE certificates SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL', [device.id, now]);
        await client.query('COMMIT');
      } finally {
        await client.end();
      }
      t.true(await within(ssh.exited, CLOSE_BOUND_MS * 2), 'node 1 closed the tunnel once it was back');
      await waitFor(() => krlRevokes(join(c.nodes[0]!.dataDir, 'revoked.krl'), device.certPath), 'node 1\'s KRL', CLOSE_BOUND_MS)
        .then(() => t.pass(), () => t.fail('node 1\'s KRL does not list the device'));
    } finally {
      await ssh.stop();
      await service.close();
    }
  }, { ports: '23300-23399' });
});

test.serial('a takeover node 1 missed while not listening (its listening backend terminated) ends its stale session when it is back', async (t) => {
  await withCluster(t, async (c, dir) => {
    const service = await startDeviceService('missed-move\n');
    const device = await enroll(c, 0, dir, 'missed-move');
    const stale = await connected(c, 0, dir, device, service);
    try {
      const [node1, node2] = [await nodeId(c, 0), await nodeId(c, 1)];
      await waitFor(async () => (await presence(c, device.id)).node_id === node1, 'presence on node 1', CLOSE_BOUND_MS);
      // One transaction: node 1's listening backend terminated, then presence moved to node 2 as node 2 would write it
      // (a session that began now); the device.connected notification goes out while node 1 is not listening.
      const client = new pg.Client({ connectionString: c.databaseUrl });
      await client.connect();
      try {
        await client.query('BEGIN');
        await client.query('SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1', [`certunnel-events:${node1}`]);
        await client.query('UPDATE devices SET online = true, node_id = $2, connected_since = $3 WHERE id = $1', [device.id, node2, Date.now()]);
        await client.query('COMMIT');
      } finally {
        await client.end();
      }
      t.true(await within(stale.exited, CLOSE_BOUND_MS * 2), 'node 1 ended its stale session once it was back');
      t.like(await presence(c, device.id), { online: true, node_id: node2 }, 'node 1\'s offline does not undo node 2\'s presence');
    } finally {
      await stale.stop();
      await service.close();
    }
  }, { ports: '23500-23599' });
});

sshdTest('OpenSSH mode on node 1: a device tunnelled through its sshd, revoked through node 3: the sshd session ends and sshd\'s KRL lists it', async (t) => {
  await withCluster(t, async (c, dir) => {
    await c.restart(0, ['--ssh-mode', 'openssh']);
    const node1 = c.nodes[0]!.dataDir;
    await ensureGatewayUsers(['tunnel', 'operator']);
    // sshd reads the principals file as the tunnel user: every directory above it must be searchable.
    for (const d of [dir, node1, join(node1, 'openssh')]) await chmod(d, 0o755);
    const sshd = await startSshd({ config: [`Include ${join(node1, 'openssh', OPENSSH_FILES.config)}`], hostKeyPath: dataPaths(node1).hostKey });
    const service = await startDeviceService('sshd-side\n');
    const device = await enroll(c, 2, dir, 'sshd-side');
    const ssh = await connectClusterDevice(sshd.port, dir, device, service);
    try {
      t.is((await exchange(device.port, 'hi')).toString(), 'sshd-side\nhi');
      await apiRequest(api(c, 2), 'POST', `/v1/devices/${device.id}/revoke`, { reason: 'test' });
      t.true(await within(ssh.exited, CLOSE_BOUND_MS), 'node 1 ended the sshd session of a device revoked through node 3');
      for (const krl of [join(node1, 'openssh', OPENSSH_FILES.krl), join(node1, 'revoked.krl')]) {
        await waitFor(() => krlRevokes(krl, device.certPath), krl, CLOSE_BOUND_MS).then(() => t.pass(), () => t.fail(`${krl} does not list the certificate`));
      }
      const again = await openClusterTunnel(sshd.port, dir, device, service);
      t.not(await again.exited, 0, 'sshd refuses the revoked certificate');
    } finally {
      await ssh.stop();
      await service.close();
      await sshd.stop();
    }
  }, { ports: '23400-23499' });
});
