/**
 * The agent's state directory (0700), which the Node agent and the POSIX
 * shell agent share:
 *
 *   device_key            OpenSSH private key, 0600; made here, never sent anywhere
 *   device_key.pub        its public half
 *   device_key-cert.pub   the current certificate (what ssh -i device_key picks up)
 *   known_hosts           the broker's trusted host keys and an @cert-authority line per host CA
 *   state.json            device id, port block, SSH endpoints, broker URL and pin, trust set, validity, renewal time
 *   status.json           what `run` is doing now (for `status`); rewritten on each state change
 *   run.pid               the running agent (one per state directory)
 *   ssh.pid               the openssh transport's ssh child (ended if a crash left it behind)
 *
 * Every file is replaced atomically (written beside, renamed over), and
 * state.json is written last: a state directory with a state.json is
 * enrolled and complete.
 */
import { mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  decodePrivateKey, parseCertificateLine, parsePublicKey, writeFileAtomic,
  type Certificate, type KeyPair, type PublicKey,
} from '../ca/index.js';
import type { CertificateGrantWire, PortBlockWire, SshAddressWire, SshEndpointWire, TrustSetWire } from '../api/index.js';
import { AgentError, EXIT } from './errors.js';
import { acceptedHostKeys, acceptedSshTrust, parseTrustSet, trustOfGrant } from './trust-set.js';

const STATE_VERSION = 1;

export interface StatePaths {
  readonly dir: string;
  readonly key: string;
  readonly publicKey: string;
  readonly certificate: string;
  readonly knownHosts: string;
  readonly state: string;
  readonly status: string;
  readonly runPid: string;
  readonly sshPid: string;
}

export function statePaths(dir: string): StatePaths {
  return {
    dir,
    key: join(dir, 'device_key'),
    publicKey: join(dir, 'device_key.pub'),
    certificate: join(dir, 'device_key-cert.pub'),
    knownHosts: join(dir, 'known_hosts'),
    state: join(dir, 'state.json'),
    status: join(dir, 'status.json'),
    runPid: join(dir, 'run.pid'),
    sshPid: join(dir, 'ssh.pid'),
  };
}

export interface BrokerApiRef {
  readonly url: string;
  readonly pin?: string;
}

/** state.json: everything the agent needs besides its key and certificate. */
export interface DeviceState {
  readonly version: number;
  readonly deviceId: string;
  readonly name: string | null;
  readonly ports: PortBlockWire;
  /** Every SSH endpoint the broker named (sshEndpointsOf); absent in a state.json from before 0.4 or from an older broker. */
  readonly sshEndpoints?: readonly SshAddressWire[];
  readonly ssh: SshEndpointWire;
  /** The broker's trust set (trust-set.ts) from the last grant that had a valid one; absent from an older broker. */
  readonly trust?: TrustSetWire;
  readonly broker: BrokerApiRef;
  readonly serial: string;
  readonly validAfter: string;
  readonly validBefore: string;
  readonly renewAfter: string;
  readonly enrolledAt: string;
  readonly renewedAt: string | null;
}

/** An enrolled state directory, loaded and cross-checked. */
export interface Enrollment {
  readonly paths: StatePaths;
  readonly state: DeviceState;
  readonly key: KeyPair;
  /** The certificate file's line and its parsed form (its validity is the truth, not state.json's). */
  readonly certificateLine: string;
  readonly certificate: Certificate;
}

export async function ensureStateDir(dir: string): Promise<StatePaths> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return statePaths(dir);
}

export async function isEnrolled(dir: string): Promise<boolean> {
  return stat(statePaths(dir).state).then(() => true, () => false);
}

function knownHostsPattern(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/**
 * A host the broker may name: a DNS name, IPv4 or IPv6 address. It goes into
 * known_hosts patterns and ssh's command line: no spaces, commas, brackets,
 * wildcards or a leading dash.
 */
const SSH_HOST = /^[A-Za-z0-9._:][A-Za-z0-9._:-]{0,252}$/;
/** More endpoints than any fleet needs is a confused broker. */
const MAX_SSH_ENDPOINTS = 64;

/** Whether VALUE is a usable list of SSH endpoints (sshEndpoints in a grant or in state.json). */
export function isSshEndpointList(value: unknown): value is readonly SshAddressWire[] {
  return Array.isArray(value) && value.length >= 1 && value.length <= MAX_SSH_ENDPOINTS && value.every((e: unknown) => {
    const { host, port } = (e ?? {}) as Partial<SshAddressWire>;
    return typeof host === 'string' && SSH_HOST.test(host) && Number.isInteger(port) && port! >= 1 && port! <= 65535;
  });
}

/**
 * The endpoints the agent may dial: the broker's list, or for a state.json
 * written before there was one (an older agent, an older broker) the single
 * `ssh` endpoint. `ssh`'s own address always counts, first if the list lacks it.
 */
export function sshEndpointsOf(state: Pick<DeviceState, 'ssh' | 'sshEndpoints'>): SshAddressWire[] {
  const own = { host: state.ssh.host, port: state.ssh.port };
  const listed = state.sshEndpoints && state.sshEndpoints.length > 0 ? state.sshEndpoints.map((e) => ({ host: e.host, port: e.port })) : [];
  return listed.some((e) => e.host === own.host && e.port === own.port) ? listed : [own, ...listed];
}

/** "host:port", IPv6 in brackets: how logs and status show an endpoint. */
export function formatSshAddress(endpoint: SshAddressWire): string {
  return `${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`;
}

/**
 * known_hosts for ssh -o UserKnownHostsFile: every trusted host key, and an
 * @cert-authority line per host CA for a broker that presents a host
 * certificate (OpenSSH mode with HostCertificate), for every endpoint
 * (comma-separated patterns: the nodes of a fleet share both keys). TRUST is
 * the stored trust set (trust-set.ts); without one, `ssh`'s key and CA
 * alone. Never trust on first use: StrictHostKeyChecking=yes and nothing
 * else is ever added.
 */
export function renderKnownHosts(ssh: SshEndpointWire, endpoints?: readonly SshAddressWire[], trust?: TrustSetWire): string {
  const pattern = sshEndpointsOf({ ssh, sshEndpoints: endpoints }).map((e) => knownHostsPattern(e.host, e.port)).join(',');
  const accepted = acceptedSshTrust(ssh, trust);
  return [
    ...accepted.hostKeys.map((key) => `${pattern} ${key} certunnel-broker`),
    ...accepted.hostCertificateAuthorities.map((ca) => `@cert-authority ${pattern} ${ca} certunnel-host-ca`),
    '',
  ].join('\n');
}

/** The broker's host keys (raw Ed25519) the ssh2 transport accepts: `ssh`'s first, then the trust set's. */
export function pinnedHostKeys(state: Pick<DeviceState, 'ssh' | 'trust'>): PublicKey[] {
  return acceptedHostKeys(state.ssh, state.trust);
}

/**
 * Checks a grant before anything is written: the certificate must certify
 * KEY, name the granted port block and be a user certificate. (Its CA
 * signature is the SSH server's to check; this catches a confused broker.)
 */
export function checkGrant(grant: CertificateGrantWire, key: PublicKey): Certificate {
  let cert: Certificate;
  try {
    cert = parseCertificateLine(grant.certificate);
  } catch (err) {
    throw new AgentError('GRANT_INVALID', `the broker sent an unreadable certificate (${(err as { code?: string }).code ?? 'malformed'})`);
  }
  if (!cert.publicKey.equals(key)) throw new AgentError('GRANT_INVALID', 'the broker certified another key');
  if (cert.type !== 'user') throw new AgentError('GRANT_INVALID', 'the broker sent a host certificate');
  const principal = `ports-${grant.ports.first}-${grant.ports.last}`;
  if (!cert.principals.includes(principal)) throw new AgentError('GRANT_INVALID', `the certificate does not name ${principal}`);
  parsePublicKey(grant.ssh.hostKey);
  parsePublicKey(grant.ssh.hostCertificateAuthority);
  if (typeof grant.ssh.host !== 'string' || !SSH_HOST.test(grant.ssh.host)) throw new AgentError('GRANT_INVALID', 'the broker sent an unusable SSH host');
  if (grant.sshEndpoints !== undefined && !isSshEndpointList(grant.sshEndpoints)) {
    throw new AgentError('GRANT_INVALID', 'the broker sent an unusable list of SSH endpoints');
  }
  return cert;
}

/**
 * Writes a grant (enrollment or renewal): certificate, known_hosts, then
 * state.json. The private key must already be in place. TRUST is the set to
 * store (trustOfGrant: the grant's, or the previous one when the grant's
 * was refused); without the field, the grant's own if it is valid.
 */
export async function writeGrant(
  paths: StatePaths,
  grant: CertificateGrantWire,
  broker: BrokerApiRef,
  times: { enrolledAt: string; renewedAt: string | null; trust?: TrustSetWire | undefined },
): Promise<DeviceState> {
  const trust = 'trust' in times ? times.trust : trustOfGrant(grant, undefined).trust;
  await writeFileAtomic(paths.certificate, `${grant.certificate.trim()}\n`, { mode: 0o644 });
  await writeFileAtomic(paths.knownHosts, renderKnownHosts(grant.ssh, grant.sshEndpoints, trust), { mode: 0o644 });
  const state: DeviceState = {
    version: STATE_VERSION,
    deviceId: grant.deviceId,
    name: grant.name,
    ports: { first: grant.ports.first, last: grant.ports.last },
    // Renewal may change the list (nodes come and go); absent from an older broker's grant.
    ...(grant.sshEndpoints ? { sshEndpoints: grant.sshEndpoints.map((e) => ({ host: e.host, port: e.port })) } : {}),
    ssh: { ...grant.ssh },
    ...(trust ? { trust } : {}),
    broker: broker.pin ? { url: broker.url, pin: broker.pin } : { url: broker.url },
    serial: grant.serial,
    validAfter: grant.validAfter,
    validBefore: grant.validBefore,
    renewAfter: grant.renewAfter,
    enrolledAt: times.enrolledAt,
    renewedAt: times.renewedAt,
  };
  await writeFileAtomic(paths.state, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
  return state;
}

function invalidState(path: string, why: string): never {
  throw new AgentError('STATE_INVALID', `${path}: ${why}; re-enroll with --force`, EXIT.ERROR);
}

async function readState(paths: StatePaths): Promise<DeviceState | null> {
  let text: string;
  try {
    text = await readFile(paths.state, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let s: DeviceState;
  try {
    s = JSON.parse(text) as DeviceState;
  } catch {
    return invalidState(paths.state, 'not valid JSON');
  }
  const ok = typeof s === 'object' && s !== null && typeof s.deviceId === 'string' && /^[A-Za-z0-9_]+$/.test(s.deviceId)
    && Number.isInteger(s.ports?.first) && Number.isInteger(s.ports?.last) && typeof s.ssh?.host === 'string'
    && Number.isInteger(s.ssh?.port) && typeof s.ssh?.hostKey === 'string' && typeof s.broker?.url === 'string'
    && (s.sshEndpoints === undefined || isSshEndpointList(s.sshEndpoints));
  if (!ok) invalidState(paths.state, 'missing or malformed fields');
  if (s.trust !== undefined) {
    try {
      return { ...s, trust: parseTrustSet(s.trust) };
    } catch (err) {
      return invalidState(paths.state, (err as Error).message);
    }
  }
  return s;
}

/** Loads an enrolled state directory: state.json, the key and the certificate, which must match. */
export async function loadEnrollment(dir: string): Promise<Enrollment | null> {
  const paths = statePaths(dir);
  const state = await readState(paths);
  if (!state) return null;
  let key: KeyPair;
  try {
    key = decodePrivateKey(await readFile(paths.key));
  } catch (err) {
    return invalidState(paths.key, `unreadable private key (${(err as { code?: string }).code ?? 'error'})`);
  }
  let certificateLine: string;
  let certificate: Certificate;
  try {
    certificateLine = (await readFile(paths.certificate, 'utf8')).trim();
    certificate = parseCertificateLine(certificateLine);
  } catch (err) {
    return invalidState(paths.certificate, `unreadable certificate (${(err as { code?: string }).code ?? 'error'})`);
  }
  if (!certificate.publicKey.equals(key.publicKey)) invalidState(paths.certificate, 'the certificate is for another key');
  return { paths, state, key, certificateLine, certificate };
}

// ---------------------------------------------------------------------------
// Runtime status (status.json), written by `run` and read by `status`.

export interface RuntimeStatus {
  readonly pid: number;
  readonly transport: string;
  readonly state: string;
  /** The SSH endpoint ("host:port") of the tunnel up, or of the last attempt; absent from agents before 0.4. */
  readonly endpoint?: string | null;
  /** ISO time the state began. */
  readonly since: string;
  readonly connectedSince: string | null;
  readonly serial: string | null;
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | null;
  readonly updatedAt: string;
}

/**
 * Written on state changes only. Renamed into place (a reader never sees half
 * a file) but not fsynced: it describes the running process, and a device's
 * flash is not worn down by a status line after every reconnect.
 */
export async function writeStatus(paths: StatePaths, status: RuntimeStatus): Promise<void> {
  const tmp = `${paths.status}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(status)}\n`, { mode: 0o644 });
  await rename(tmp, paths.status);
}

export async function readStatus(paths: StatePaths): Promise<RuntimeStatus | null> {
  try {
    return JSON.parse(await readFile(paths.status, 'utf8')) as RuntimeStatus;
  } catch {
    return null;
  }
}

function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim();
}

/** The pid in run.pid if that process is alive in this boot (a pid from before a reboot means nothing). */
export async function runningAgentPid(paths: StatePaths): Promise<number | null> {
  const [pidText, boot] = (await readFile(paths.runPid, 'utf8').catch(() => '')).trim().split(/\s+/);
  const pid = Number(pidText);
  if (!isProcessAlive(pid) || (boot ?? '') !== (await bootId())) return null;
  return pid;
}

/**
 * One `run` per state directory: two agents with the same certificate
 * would take the tunnel from each other forever. A run.pid whose process
 * is gone (crash, power cut, reboot) is taken over.
 */
export async function acquireRunLock(paths: StatePaths, pid = process.pid): Promise<() => Promise<void>> {
  const boot = await bootId();
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(paths.runPid, `${pid} ${boot}\n`, { flag: 'wx', mode: 0o644 });
      return async () => {
        const current = await readFile(paths.runPid, 'utf8').catch(() => '');
        if (Number(current.trim().split(/\s+/)[0]) === pid) await unlink(paths.runPid).catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const other = await runningAgentPid(paths);
    if (other !== null && other !== pid) {
      throw new AgentError('ALREADY_RUNNING', `an agent (pid ${other}) already runs on ${paths.dir}`, EXIT.ERROR);
    }
    await unlink(paths.runPid).catch(() => undefined);
  }
  throw new AgentError('ALREADY_RUNNING', `cannot take ${paths.runPid}`, EXIT.ERROR);
}
