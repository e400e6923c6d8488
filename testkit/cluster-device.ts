/**
 * A device of a test cluster (testkit/cluster.ts) driven as a field device
 * would be: enrolled through one node's API with its own key, then a real
 * `ssh -N -R` tunnel of its first port to any node's SSH port; and a GET
 * through a node's HTTP proxy, as an operator's browser would send it.
 */
import { request } from 'node:https';
import { join } from 'node:path';
import { apiRequest, type ApiClientOptions, type EnrollResponse, type MintTokensResponse } from '../api/index.js';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, type KeyPair } from '../ca/index.js';
import type { TestCluster } from './cluster.js';
import type { DeviceService } from './gateway.js';
import { isListening } from './net.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts, type ClientIdentity, type SshProcess } from './ssh-client.js';

export interface ClusterDevice {
  readonly id: string;
  readonly key: KeyPair;
  readonly identity: ClientIdentity;
  readonly hostKey: string;
  /** The first port of its block: the one its tunnel binds. */
  readonly port: number;
  readonly certPath: string;
}

/** Node I's API as the cluster's admin. */
export function nodeApi(c: TestCluster, i: number): ApiClientOptions {
  return { baseUrl: c.nodes[i]!.broker.apiUrl, pin: c.pin, apiKey: c.adminKey };
}

/** Mints a token and enrolls NAME through node I; writes its key and certificate under DIR. */
export async function enrollClusterDevice(c: TestCluster, i: number, dir: string, name: string): Promise<ClusterDevice> {
  const minted = await apiRequest<MintTokensResponse>(nodeApi(c, i), 'POST', '/v1/tokens', { count: 1 });
  const key = generateKeyPair();
  const grant = await apiRequest<EnrollResponse>({ baseUrl: c.nodes[i]!.broker.apiUrl, pin: c.pin }, 'POST', '/v1/enroll', {
    token: minted.tokens[0]!.token, publicKey: formatPublicKey(key.publicKey), name,
  });
  const identity = await writeClientIdentity(dir, name, key, parseCertificateLine(grant.certificate));
  return { id: grant.deviceId, key, identity, hostKey: grant.ssh.hostKey, port: grant.ports.first, certPath: identity.certPath! };
}

/** `ssh -N -R` of the device's first port to SSHPORT (a node's gateway, or an sshd) toward SERVICE. */
export async function openClusterTunnel(sshPort: number, dir: string, device: ClusterDevice, service: DeviceService, options: { exitOnForwardFailure?: boolean } = {}): Promise<SshProcess> {
  const knownHosts = await writeKnownHosts(join(dir, `known_hosts.${sshPort}`), '127.0.0.1', sshPort, parsePublicKey(device.hostKey));
  return spawnSsh([
    ...sshArgs({ port: sshPort, knownHosts, identity: device.identity }),
    '-N', '-o', `ExitOnForwardFailure=${options.exitOnForwardFailure === false ? 'no' : 'yes'}`, '-o', 'ServerAliveInterval=5',
    '-R', `127.0.0.1:${device.port}:127.0.0.1:${service.port}`,
  ]);
}

/** openClusterTunnel, then waits until the port listens; throws (with ssh's last line) if ssh exits first. */
export async function connectClusterDevice(sshPort: number, dir: string, device: ClusterDevice, service: DeviceService): Promise<SshProcess> {
  const ssh = await openClusterTunnel(sshPort, dir, device, service);
  let exited: number | undefined;
  void ssh.exited.then((code) => (exited = code));
  try {
    await waitFor(async () => exited !== undefined || (await isListening(device.port)), `the tunnel of ${device.id} (port ${sshPort})`, 20_000);
  } catch (err) {
    await ssh.stop();
    throw err;
  }
  if (exited !== undefined) throw new Error(`ssh exited ${exited}: ${ssh.stderr().trim().split('\n').at(-1)}`);
  return ssh;
}

/** GET PATH from the broker's HTTP proxy on 127.0.0.1:APIPORT for the device named by HOST (`<device>.<domain>`), as the admin APIKEY. */
export function proxyGet(apiPort: number, host: string, apiKey: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: apiPort, path, rejectUnauthorized: false, headers: { host, authorization: `Bearer ${apiKey}` } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.once('error', reject);
    req.end();
  });
}
