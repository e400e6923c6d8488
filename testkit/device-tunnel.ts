/**
 * A device of a test broker (testkit/broker.ts) as an attacker or a field
 * device would drive it: enrolled over the API with its own key, then a
 * real `ssh -N -R` tunnel of its first port to the broker's SSH server (the
 * embedded gateway, or a real sshd configured by OpenSSH mode). For the
 * revocation tests: is the device in, can it bind, did its tunnel close.
 */
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair, parseCertificateLine, parsePublicKey, type KeyPair } from '../ca/index.js';
import type { EnrollResponse, RenewResponse } from '../api/index.js';
import { buildRenewRequest } from '../agent/renew-request.js';
import { dataPaths, type TestBroker } from './broker.js';
import { OPENSSH_FILES } from '../broker/openssh/config-files.js';
import { ensureGatewayUsers } from './conformance/sshd-driver.js';
import { startSshd, type RunningSshd } from './sshd.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts, type ClientIdentity, type SshProcess } from './ssh-client.js';
import { isListening } from './net.js';

export interface TestDevice {
  readonly id: string;
  readonly key: KeyPair;
  readonly grant: EnrollResponse | RenewResponse;
  readonly identity: ClientIdentity;
  readonly knownHosts: string;
  /** The first port of its block: the one its tunnel binds. */
  readonly port: number;
}

/** Mints a token and enrolls NAME with a fresh key; writes its key, certificate and known_hosts under the broker's directory. */
export async function enrollTestDevice(b: TestBroker, name: string): Promise<TestDevice> {
  const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
  const key = generateKeyPair();
  const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: tokens[0]!.token, publicKey: formatPublicKey(key.publicKey), name });
  return deviceFiles(b, grant.deviceId, name, key, grant);
}

async function deviceFiles(b: TestBroker, id: string, name: string, key: KeyPair, grant: EnrollResponse | RenewResponse): Promise<TestDevice> {
  const identity = await writeClientIdentity(b.dir, name, key, parseCertificateLine(grant.certificate));
  const knownHosts = join(b.dir, `${name}.known_hosts`);
  return { id, key, grant, identity, knownHosts, port: grant.ports.first };
}

/** Renews DEVICE's certificate with a new key (key rotation); the result uses the new key and certificate. */
export async function rotateTestDevice(b: TestBroker, device: TestDevice, name: string): Promise<TestDevice> {
  const newKey = generateKeyPair();
  const grant = await b.call<RenewResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: device.id, key: device.key, newKey }));
  return deviceFiles(b, device.id, name, newKey, grant);
}

/** `ssh -N -R 127.0.0.1:<port>:127.0.0.1:<servicePort>` as DEVICE to the SSH server on SSHPORT. */
export async function openDeviceTunnel(device: TestDevice, sshPort: number, servicePort: number): Promise<SshProcess> {
  await writeKnownHosts(device.knownHosts, '127.0.0.1', sshPort, parsePublicKey(device.grant.ssh.hostKey));
  return spawnSsh([
    ...sshArgs({ port: sshPort, knownHosts: device.knownHosts, identity: device.identity, user: device.grant.ssh.username }),
    '-N', '-o', 'ExitOnForwardFailure=yes', '-o', 'ServerAliveInterval=5', '-R', `127.0.0.1:${device.port}:127.0.0.1:${servicePort}`,
  ]);
}

/** Opens DEVICE's tunnel and waits until its port listens; throws (with ssh's stderr) if ssh exits first. */
export async function connectDevice(device: TestDevice, sshPort: number, servicePort: number): Promise<SshProcess> {
  const ssh = await openDeviceTunnel(device, sshPort, servicePort);
  let exited: number | undefined;
  void ssh.exited.then((code) => (exited = code));
  try {
    await waitFor(async () => exited !== undefined || (await isListening(device.port)), `the tunnel of ${device.id} to listen`, 20_000);
  } catch (err) {
    await ssh.stop();
    throw err;
  }
  if (exited !== undefined) throw new Error(`ssh exited ${exited} before its tunnel listened: ${ssh.stderr().trim().split('\n').at(-1)}`);
  return ssh;
}

/**
 * A real sshd configured only by the broker's OpenSSH-mode files (the
 * broker must run with ssh.mode openssh), with the broker's own host key.
 * Needs root (sshd switches to the tunnel user). EXTRACONFIG: lines after
 * the Include (e.g. a PidFile), before the test sshd's defaults.
 */
export async function startBrokerSshd(b: TestBroker, extraConfig: readonly string[] = []): Promise<RunningSshd> {
  await ensureGatewayUsers(['tunnel', 'operator']);
  // sshd reads the principals file as the tunnel user: every directory above it must be searchable.
  await chmod(b.dir, 0o755);
  return startSshd({ config: [`Include ${join(b.dir, b.broker.core.config.ssh.opensshDir, OPENSSH_FILES.config)}`, ...extraConfig], hostKeyPath: dataPaths(b.dir).hostKey });
}
