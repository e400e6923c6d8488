/**
 * Conformance driver for OpenSSH mode: a real sshd on 127.0.0.1 configured
 * only by what broker/openssh writes. The main sshd_config plays the system
 * admin's: its own host key, permissive Debian-like globals after the
 * Include (X11Forwarding yes, AllowTcpForwarding yes, an sftp subsystem), so
 * every refusal has to come from the generated Match blocks.
 *
 * Needs root: sshd checks the privilege-separation directory and switches to
 * the device and operator users, which must exist (ensureGatewayUsers).
 */
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { encodeKrl, formatCertificate, generateKeyPair, saveKeyPair, signHostCert, writeKrl, type PortBlock } from '../../ca/index.js';
import { blockPorts, DEVICE_LOGIN, OPERATOR_LOGIN } from '../../api/index.js';
import { OPENSSH_FILES, writeOpensshFiles } from '../../broker/openssh/config-files.js';
import { findListenerPids, killSessionsHoldingPorts, listenerInodes, ListenerPidCache, readTcpSockets } from '../../broker/openssh/session-killer.js';
import { runCommand } from '../openssh.js';
import { startSshd, type RunningSshd } from '../sshd.js';
import { type Gateway, type GatewayDriver, type World } from './world.js';

/**
 * Creates the users if missing (system users, no home, nologin shell: they
 * never get a session). Measured with OpenSSH 9.2: with UsePAM no, sshd
 * refuses an account whose password field starts with "!" ("account is
 * locked"), which is what useradd leaves by default; "*" (no password, not
 * locked) works, and so does "!" with UsePAM yes. So a locked "!" account is
 * switched to "*": neither allows a password login.
 */
export async function ensureGatewayUsers(users: readonly string[]): Promise<string[]> {
  const actions: string[] = [];
  for (const user of users) {
    if ((await runCommand('getent', ['passwd', user])).code !== 0) {
      // -N: no user group (Debian already has a group named "operator").
      const r = await runCommand('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '-N', '-p', '*', user]);
      if (r.code !== 0) throw new Error(`useradd ${user}: ${r.stderr.trim()}`);
      actions.push(`created ${user}`);
    }
    const shadow = await runCommand('getent', ['shadow', user]);
    if (shadow.stdout.split(':')[1]?.startsWith('!')) {
      const r = await runCommand('usermod', ['-p', '*', user]);
      if (r.code !== 0) throw new Error(`usermod ${user}: ${r.stderr.trim()}`);
      actions.push(`unlocked ${user} ("!" -> "*")`);
    }
  }
  return actions;
}

export interface SshdGateway extends Gateway {
  readonly configPath: string;
  readonly outDir: string;
  /** The sshd master (listener) process. */
  readonly masterPid: number;
  /** Pids killSessionsHoldingPorts signalled at the last revoke. */
  readonly lastKilled: readonly number[];
  /** sshd's log so far (-e: to stderr), for diagnostics. */
  log(): string;
}

/** The broker's host key (written to WORLD.dir) and its certificate by the host CA, which clients trust. */
async function certifiedHostKey(world: World): Promise<{ hostKeyPath: string; hostCertificate: string }> {
  const hostKeyPath = join(world.dir, 'broker_host_key');
  const hostKey = generateKeyPair();
  await saveKeyPair(hostKeyPath, hostKey);
  const hostCert = signHostCert({ hostCa: world.hostCa, publicKey: hostKey.publicKey, hostnames: world.hostnames, serial: world.nextSerial(), now: new Date() });
  return { hostKeyPath, hostCertificate: formatCertificate(hostCert) };
}

/** The "system" sshd: the generated files included, permissive globals after them; and its master's pid. */
async function startSystemSshd(outDir: string, extraConfig: readonly string[]): Promise<{ sshd: RunningSshd; masterPid: number }> {
  // testkit/sshd.ts adds port, listen address, the "system" host key
  // (its own, plain: the client does not trust it), no PAM, no pid file.
  const sshd = await startSshd({
    config: [
      `Include ${join(outDir, OPENSSH_FILES.config)}`,
      // Globals after the Include, permissive on purpose.
      'X11Forwarding yes',
      'AllowTcpForwarding yes',
      'PermitTTY yes',
      'Subsystem sftp /usr/lib/openssh/sftp-server',
      ...extraConfig,
    ],
  });
  // The master is whoever listens on sshd's own port.
  const listeners = findListenerPids([sshd.port]);
  const masterPid = listeners[0];
  if (listeners.length !== 1 || masterPid === undefined) throw new Error(`expected one sshd master, found ${listeners.join(', ') || 'none'}`);
  return { sshd, masterPid };
}

async function startGateway(world: World, deviceUser: string, operatorUser: string, extraConfig: readonly string[]): Promise<SshdGateway> {
  await ensureGatewayUsers([deviceUser, operatorUser]);
  const outDir = join(world.dir, 'openssh');
  // sshd reads AuthorizedPrincipalsFile with the user's uid (measured:
  // "Could not open user 'operator' authorized principals …: Permission
  // denied" under mkdtemp's 0700), so every directory above it must be
  // searchable by the tunnel and operator users. Keys inside stay 0600.
  await chmod(world.dir, 0o755);
  const revoked = new Set<bigint>();
  let krlVersion = 1n;
  await writeOpensshFiles({
    outDir,
    userCaKeys: [world.userCa.publicKey],
    ...(await certifiedHostKey(world)),
    krl: encodeKrl({ caKey: world.userCa.publicKey, version: krlVersion, generatedAt: new Date() }),
    pool: world.pool,
    deviceUser,
    operatorUser,
  });
  const { sshd, masterPid } = await startSystemSshd(outDir, extraConfig);
  let lastKilled: number[] = [];
  // As the broker's OpenSSH presence does: learn which sshd session holds each pool listener while it is
  // up, so that a revocation signals it at once instead of scanning /proc then (issue 12 item 13).
  const pids = new ListenerPidCache();
  const poolPorts = new Set(blockPorts(world.pool));
  const learning = setInterval(() => pids.learn(listenerInodes(readTcpSockets() ?? [], poolPorts)), 250);
  learning.unref();
  return {
    name: 'sshd',
    target: { host: '127.0.0.1', port: sshd.port, knownHostsPath: world.knownHostsPath },
    deviceUser,
    operatorUser,
    configPath: join(sshd.dir, 'sshd_config'),
    outDir,
    masterPid,
    get lastKilled() {
      return lastKilled;
    },
    log: () => sshd.output(),
    // The broker's revoke in OpenSSH mode (broker/compose/start.ts, revocationHooks): end the sessions
    // that hold the ports first, touching no file; then the KRL (no new logins); then end whatever
    // logged in before the KRL landed.
    async revoke(serials: readonly bigint[], blocks: readonly PortBlock[]) {
      const ports = blocks.flatMap(blockPorts);
      lastKilled = killSessionsHoldingPorts(ports, { cache: pids });
      for (const s of serials) revoked.add(s);
      await writeKrl(join(outDir, OPENSSH_FILES.krl), { caKey: world.userCa.publicKey, serials: revoked, version: ++krlVersion, generatedAt: new Date() });
      lastKilled = [...lastKilled, ...killSessionsHoldingPorts(ports, { cache: pids })];
    },
    async stop() {
      clearInterval(learning);
      // Per-connection sshd processes call setsid(), so stopping the master's
      // process group leaves live sessions behind (measured): end those that
      // hold pool ports first.
      killSessionsHoldingPorts(blockPorts(world.pool));
      await sshd.stop();
    },
  };
}

export interface SshdDriver extends GatewayDriver {
  start(world: World): Promise<SshdGateway>;
}

export interface SshdDriverOptions {
  readonly deviceUser?: string;
  readonly operatorUser?: string;
  /** More global lines for the "system" sshd_config (after the Include), e.g. MaxStartups for a benchmark. */
  readonly extraConfig?: readonly string[];
}

export function sshdDriver(options: SshdDriverOptions = {}): SshdDriver {
  return {
    name: 'sshd',
    start: (world) => startGateway(world, options.deviceUser ?? DEVICE_LOGIN, options.operatorUser ?? OPERATOR_LOGIN, options.extraConfig ?? []),
  };
}
