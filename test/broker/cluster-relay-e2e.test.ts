/**
 * Operators reach any device through any node, end to end: two real broker
 * processes on one throwaway PostgreSQL, each with cluster.internalListen; a
 * device whose real `ssh -R` tunnel is on node 1 (to a real sshd standing in
 * for the device's, and a web service); an operator on node 2 runs
 * `certunnel ssh`, the real `ssh -J`, and the HTTP proxy — all through the
 * node-to-node link. Then the tunnel goes down: node 2 answers DEVICE_OFFLINE
 * at once. Needs root (sshd) and PostgreSQL.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { apiRequest, type EnrollResponse, type MintTokensResponse, type OperatorCertificateResponse } from '../../api/index.js';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, saveKeyPair } from '../../ca/index.js';
import { apiErrorCode } from '../../testkit/api-error.js';
import { runCli } from '../../testkit/cli.js';
import { startTestCluster } from '../../testkit/cluster.js';
import { proxyGet } from '../../testkit/cluster-device.js';
import { freePortBlock } from '../../testkit/gateway.js';
import { makeOpensshKey, runCommand, withTempDir } from '../../testkit/openssh.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts } from '../../testkit/ssh-client.js';
import { startSshd } from '../../testkit/sshd.js';

const CAN_RUN = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/sbin/sshd');
const sshdTest = CAN_RUN ? test : test.skip;
const DOMAIN = 'cluster.test';

sshdTest('ok/operator on node 2 reaches a device whose tunnel is on node 1: certunnel ssh, ssh -J, HTTP proxy; DEVICE_OFFLINE when it leaves', async (t) => {
  await withTempDir(async (dir) => {
    const pool = await freePortBlock(20);
    const cluster = await startTestCluster({
      nodes: 2, dir, initArgs: ['--port-range', `${pool.first}-${pool.last}`, '--domain', DOMAIN], env: { CERTUNNEL_CLUSTER_INTERNAL_LISTEN: '127.0.0.1:0' },
    });
    const cleanups: Array<() => Promise<unknown>> = [];
    try {
      const [n1, n2] = cluster.nodes.map((n) => n.broker);
      const admin1 = { baseUrl: n1!.apiUrl, pin: cluster.pin, apiKey: cluster.adminKey };
      const admin2 = { baseUrl: n2!.apiUrl, pin: cluster.pin, apiKey: cluster.adminKey };

      // The device's own services: an sshd that lets the operator's login key in, and a web page.
      const login = await makeOpensshKey(dir, 'operator-login');
      const authorizedKeys = join(dir, 'authorized_keys');
      await writeFile(authorizedKeys, `${login.publicKeyLine}\n`);
      const sshd = await startSshd({ config: [`AuthorizedKeysFile ${authorizedKeys}`, 'PermitRootLogin prohibit-password'] });
      cleanups.push(() => sshd.stop());
      const deviceKnownHosts = join(dir, 'device_known_hosts');
      const sshdHostKey = (await readFile(`${sshd.hostKeyPath}.pub`, 'utf8')).trim().split(' ').slice(0, 2).join(' ');
      await writeFile(deviceKnownHosts, `kiosk-c ${sshdHostKey}\n`);
      const web = createServer((req, res) => res.end(`device page ${req.url}`));
      await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise((r) => web.close(r)));

      // Enrolled through node 1, tunnel on node 1.
      const minted = await apiRequest<MintTokensResponse>(admin1, 'POST', '/v1/tokens', { count: 1 });
      const key = generateKeyPair();
      const grant = await apiRequest<EnrollResponse>({ baseUrl: n1!.apiUrl, pin: cluster.pin }, 'POST', '/v1/enroll', { token: minted.tokens[0]!.token, publicKey: formatPublicKey(key.publicKey), name: 'kiosk-c' });
      const identity = await writeClientIdentity(dir, 'kiosk-c', key, parseCertificateLine(grant.certificate));
      const brokerKnownHosts = await writeKnownHosts(join(dir, 'broker_known_hosts'), '127.0.0.1', n1!.sshPort, parsePublicKey(grant.ssh.hostKey));
      const tunnel = spawnSsh([
        ...sshArgs({ port: n1!.sshPort, knownHosts: brokerKnownHosts, identity, user: grant.ssh.username }),
        '-N', '-o', 'ExitOnForwardFailure=yes', '-o', 'ServerAliveInterval=5',
        '-R', `127.0.0.1:${grant.ports.first}:127.0.0.1:${sshd.port}`, '-R', `127.0.0.1:${grant.ports.first + 1}:127.0.0.1:${(web.address() as AddressInfo).port}`,
      ]);
      cleanups.push(() => tunnel.stop());
      await waitFor(async () => (await apiRequest<{ online: boolean }>(admin2, 'GET', `/v1/devices/${grant.deviceId}`)).online || tunnel.child.exitCode !== null, 'the device online');
      t.is(tunnel.child.exitCode, null, tunnel.stderr());

      const env = { CERTUNNEL_API_KEY: cluster.adminKey, CERTUNNEL_HOME: join(dir, 'operator-home') };
      const api2 = ['--api', n2!.apiUrl, '--pin', cluster.pin];
      const deviceLogin = ['-F', '/dev/null', '-i', login.path, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${deviceKnownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-l', 'root'];

      // certunnel ssh through node 2.
      const viaCli = await runCli(['ssh', 'kiosk-c', ...api2, '--', ...deviceLogin, 'echo', 'hello via node 2'], env);
      t.is(viaCli.code, 0, viaCli.stderr);
      t.is(viaCli.stdout, 'hello via node 2\n');

      // The real ssh -J, with node 2's SSH port as the jump host, naming the device.
      const opKey = generateKeyPair();
      const opKeyPath = join(dir, 'op_ed25519');
      await saveKeyPair(opKeyPath, opKey);
      const cert = await apiRequest<OperatorCertificateResponse>(admin2, 'POST', `/v1/devices/kiosk-c/operator-certificate`, { publicKey: formatPublicKey(opKey.publicKey) });
      t.is(cert.ssh.port, n2!.sshPort);
      await writeFile(`${opKeyPath}-cert.pub`, `${cert.certificate}\n`);
      const jumpKnownHosts = await writeKnownHosts(join(dir, 'jump_known_hosts'), '127.0.0.1', n2!.sshPort, parsePublicKey(cert.ssh.hostKey));
      const config = join(dir, 'ssh_config');
      await writeFile(config, [
        'Host node2', '  HostName 127.0.0.1', `  Port ${n2!.sshPort}`, `  User ${cert.ssh.username}`, `  IdentityFile ${opKeyPath}`, `  CertificateFile ${opKeyPath}-cert.pub`,
        `  UserKnownHostsFile ${jumpKnownHosts}`, '  StrictHostKeyChecking yes', '  IdentitiesOnly yes', '  IdentityAgent none', '  BatchMode yes',
        'Host kiosk-c', `  IdentityFile ${login.path}`, '  IdentitiesOnly yes', `  UserKnownHostsFile ${deviceKnownHosts}`, '  StrictHostKeyChecking yes', '  BatchMode yes', '  User root', '',
      ].join('\n'));
      const jump = await runCommand('ssh', ['-F', config, '-J', 'node2', 'kiosk-c', 'echo', 'jumped via node 2']);
      t.is(jump.code, 0, jump.stderr);
      t.is(jump.stdout, 'jumped via node 2\n');

      // The HTTP proxy on node 2.
      const page = await proxyGet(n2!.apiPort, `kiosk-c.${DOMAIN}`, cluster.adminKey, '/hello');
      t.is(page.status, 200, page.body);
      t.is(page.body, 'device page /hello');

      // Node 1 relayed all three for node 2, and said so.
      const reached = (await apiRequest<{ items: Array<{ actor: string; details: Record<string, unknown> }> }>(admin1, 'GET', '/v1/audit?limit=100&action=ssh.relay.reach')).items;
      t.true(reached.length >= 3, JSON.stringify(reached));
      t.true(reached.every((e) => /^node:node_/.test(e.actor)));

      // The tunnel goes down: node 2 says DEVICE_OFFLINE (proxy and operator certificate), without waiting.
      await tunnel.stop();
      await waitFor(async () => !(await apiRequest<{ online: boolean }>(admin2, 'GET', `/v1/devices/${grant.deviceId}`)).online, 'the device offline');
      const offline = await proxyGet(n2!.apiPort, `kiosk-c.${DOMAIN}`, cluster.adminKey, '/hello');
      t.is(offline.status, 502);
      t.regex(offline.body, /DEVICE_OFFLINE/);
      t.is(await apiErrorCode(apiRequest(admin2, 'POST', `/v1/devices/kiosk-c/operator-certificate`, { publicKey: formatPublicKey(opKey.publicKey) })), 'DEVICE_OFFLINE');
    } finally {
      for (const c of cleanups.reverse()) await c().catch(() => undefined);
      await cluster.stop();
    }
  });
});
