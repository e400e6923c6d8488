/**
 * OpenSSH mode: everything a stock sshd (OpenSSH >= 9.2) needs to enforce
 * certunnel's policy, rendered as files into one directory. The renderer is
 * pure (input -> file contents); the writer replaces each file atomically,
 * because sshd re-reads the principals files, the CA key and the KRL on every
 * authentication and must never see a torn or missing one (a missing
 * RevokedKeys file makes sshd refuse every key).
 *
 * The policy is the embedded gateway's, expressed in sshd's vocabulary:
 * - `TrustedUserCAKeys` + `AuthorizedPrincipalsFile` (and no authorized_keys)
 *   admit only certificates signed by the user CA whose principal is a block
 *   of the pool, `ports-A-B` for the device user, `reach-A-B` for the
 *   operator user (sshd(8) AUTHORIZED_KEYS FILE FORMAT: principals lines take
 *   the same options as authorized_keys lines);
 * - `restrict,port-forwarding,permitlisten="127.0.0.1:P"` on each device line
 *   lets that certificate listen on exactly its own ports, on loopback only;
 *   `permitopen` does the same for operators' direct-tcpip channels;
 * - the Match blocks switch off everything else (sessions, TTY, agent/X11,
 *   tunnels, streamlocal) for both users.
 */
import { createHash } from 'node:crypto';
import { basename, join } from 'node:path';
import { mkdir, readdir } from 'node:fs/promises';
import {
  devicePrincipal, encodePrivateKey, formatPublicKey, operatorPrincipal, publicKeyBlob, writeFileAtomic, type KeyPair, type PublicKey,
} from '../../ca/index.js';
import { blockPorts, DEVICE_LOGIN, OPERATOR_LOGIN, TUNNEL_HOST } from '../../api/index.js';
import { BrokerError } from '../core/errors.js';
import { isValidPool, poolBlocks, type PortPool } from '../core/port-pool.js';
import { parseMaxStartups } from '../core/rate-limit.js';

export interface OpensshModeInput {
  /**
   * Where to write (absolute). sshd's StrictModes wants it owned by root and
   * not group/world-writable; sshd reads the principals files as the
   * connecting user, so it and every directory above must be searchable by
   * the device and operator users.
   */
  readonly outDir: string;
  /** The user CAs whose certificates log in (TrustedUserCAKeys): the trust snapshot's acceptedUserCas, 1 to 4. */
  readonly userCaKeys: readonly PublicKey[];
  /** The broker's host private key file, already on disk (writeHostKeyFile); referenced by HostKey, not copied. */
  readonly hostKeyPath: string;
  /** The host certificate line for that key. */
  readonly hostCertificate: string;
  /**
   * The name in outDir the host certificate is written to (writeHostKeyFile's, one per key and certificate: sshd
   * reads it when it starts or reloads, so a rotation writes a new one beside the old); default host_key-cert.pub.
   */
  readonly hostCertificateFile?: string;
  /** The current KRL; always written. */
  readonly krl: Buffer;
  readonly pool: PortPool;
  /** Default 'tunnel'. */
  readonly deviceUser?: string;
  /** Default 'operator'. */
  readonly operatorUser?: string;
  /** ClientAliveInterval / ClientAliveCountMax: how fast sshd notices a vanished device. Default 15 s x 3. */
  readonly keepalive?: { readonly intervalSeconds: number; readonly countMax: number };
  /**
   * Connections not yet authenticated: MaxStartups (start:rate:full), PerSourceMaxStartups and LoginGraceTime.
   * Default 128:30:512, 32 and 15 s, as the embedded gateway.
   */
  readonly startups?: { readonly maxStartups: string; readonly perSource: number; readonly loginGraceSeconds: number };
}

export interface OpensshFile {
  readonly content: string | Buffer;
  readonly mode: number;
}

/** Relative names of the files in outDir. */
export const OPENSSH_FILES = {
  config: 'sshd_config.certunnel',
  userCa: 'user_ca.pub',
  hostCertificate: 'host_key-cert.pub',
  krl: 'revoked.krl',
  devicePrincipals: 'principals.devices',
  operatorPrincipals: 'principals.operators',
} as const;

// sshd_config expands %-tokens in TrustedUserCAKeys and AuthorizedPrincipalsFile
// and splits arguments on blanks and quotes; a path that needs neither
// escaping nor quoting cannot be misread, so anything else is refused.
const SAFE_PATH = /^\/[A-Za-z0-9._+/-]*$/;
// Portable user names (useradd's default NAME_REGEX), and nothing that sshd's
// Match pattern language would read as a wildcard, negation or list.
const SAFE_USER = /^[a-z_][a-z0-9_-]{0,31}$/;
// What writeHostKeyFile names its files: host_key-<hex>[-<hex>]-cert.pub.
const HOST_KEY_FILE = /^host_key(-[0-9a-f]{1,64}){0,2}(-cert\.pub)?$/;

function invalid(message: string): never {
  throw new BrokerError('CONFIG_INVALID', message);
}

function checkPool(pool: PortPool): void {
  if (!isValidPool(pool)) invalid('invalid port pool');
}

function checkInput(input: OpensshModeInput): { deviceUser: string; operatorUser: string } {
  if (!SAFE_PATH.test(input.outDir)) invalid('OpenSSH mode directory must be an absolute path of [A-Za-z0-9._+/-]');
  if (!SAFE_PATH.test(input.hostKeyPath)) invalid('host key path must be an absolute path of [A-Za-z0-9._+/-]');
  if (input.userCaKeys.length < 1 || input.userCaKeys.length > 4 || input.userCaKeys.some((k) => k.length !== 32)) {
    invalid('user CA keys must be 1 to 4 raw Ed25519 keys');
  }
  if (input.hostCertificateFile !== undefined && !HOST_KEY_FILE.test(input.hostCertificateFile)) invalid('host certificate file must be a plain name');
  if (!/^ssh-ed25519-cert-v01@openssh\.com [A-Za-z0-9+/]+={0,2}( [^\n]*)?$/.test(input.hostCertificate.trim())) {
    invalid('host certificate must be one Ed25519 certificate line');
  }
  checkPool(input.pool);
  const deviceUser = input.deviceUser ?? DEVICE_LOGIN;
  const operatorUser = input.operatorUser ?? OPERATOR_LOGIN;
  if (!SAFE_USER.test(deviceUser) || !SAFE_USER.test(operatorUser)) invalid('device and operator users must be plain user names');
  if (deviceUser === operatorUser) invalid('device and operator users must differ');
  const startups = input.startups;
  if (startups && !(parseMaxStartups(startups.maxStartups) && [startups.perSource, startups.loginGraceSeconds].every((n) => Number.isInteger(n) && n >= 1))) {
    invalid('startups must be start:rate:full and positive integers');
  }
  const keepalive = input.keepalive;
  if (keepalive && !(Number.isInteger(keepalive.intervalSeconds) && keepalive.intervalSeconds >= 1 && Number.isInteger(keepalive.countMax) && keepalive.countMax >= 1)) {
    invalid('keepalive must be positive integers');
  }
  return { deviceUser, operatorUser };
}

/**
 * One principals line per block of the pool, as the port allocator lays them
 * out (port-pool.ts: a trailing partial block is never allocated). A line
 * names every port of its block, so a certificate for ports-A-B may listen on
 * (or, for reach-A-B, open) exactly A..B on 127.0.0.1.
 */
export function renderPrincipals(pool: PortPool, kind: 'devices' | 'operators'): string {
  checkPool(pool);
  const option = kind === 'devices' ? 'permitlisten' : 'permitopen';
  const principal = kind === 'devices' ? devicePrincipal : operatorPrincipal;
  // Plain string building: 5,000 blocks render in a few milliseconds.
  const lines: string[] = [];
  for (const block of poolBlocks(pool)) {
    let options = 'restrict,port-forwarding';
    for (const port of blockPorts(block)) options += `,${option}="${TUNNEL_HOST}:${port}"`;
    lines.push(`${options} ${principal(block)}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Lockdown shared by both users. Every keyword here is one sshd_config(5)
 * (OpenSSH 9.2) allows after Match; each closes a door explicitly instead of
 * relying on the system config's defaults, which the admin may have changed.
 */
function lockdown(input: OpensshModeInput, principalsFile: string): string[] {
  const keepalive = input.keepalive ?? { intervalSeconds: 15, countMax: 3 };
  return [
    // Certificates only: no passwords, no keyboard-interactive, no
    // authorized_keys or lookup commands the admin may have set globally.
    'AuthenticationMethods publickey',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'HostbasedAuthentication no',
    'PermitEmptyPasswords no',
    // Ed25519 certificates signed by an Ed25519 CA, as the CA issues them;
    // a plain key is refused before the principals file is even read.
    'PubkeyAcceptedAlgorithms ssh-ed25519-cert-v01@openssh.com',
    'CASignatureAlgorithms ssh-ed25519',
    'AuthorizedKeysFile none',
    'AuthorizedKeysCommand none',
    'AuthorizedPrincipalsCommand none',
    `TrustedUserCAKeys ${join(input.outDir, OPENSSH_FILES.userCa)}`,
    `AuthorizedPrincipalsFile ${join(input.outDir, principalsFile)}`,
    // Allowed after Match (sshd_config(5), 9.2); set per user so that the
    // system's own RevokedKeys, if any, still governs everyone else.
    `RevokedKeys ${join(input.outDir, OPENSSH_FILES.krl)}`,
    // No session channel at all: MaxSessions 0 refuses exec, shell and
    // subsystems (sftp) before anything runs. ForceCommand is the second
    // wall should a later OpenSSH count sessions differently.
    'MaxSessions 0',
    'ForceCommand /bin/false',
    'PermitTTY no',
    'PermitUserRC no',
    'X11Forwarding no',
    'AllowAgentForwarding no',
    'AllowStreamLocalForwarding no',
    'PermitTunnel no',
    // Remote listeners on loopback whatever address the client asks for.
    'GatewayPorts no',
    'ExposeAuthInfo no',
    'Banner none',
    `ClientAliveInterval ${keepalive.intervalSeconds}`,
    `ClientAliveCountMax ${keepalive.countMax}`,
  ];
}

/**
 * Unauthenticated connections, as the embedded gateway limits them: random
 * early drop over all sources, a cap per IPv4 address or IPv6 /64 (the
 * gateway's source key), a short login grace. Global keywords (not allowed
 * after Match): they govern everyone this sshd serves, admins included.
 */
function startupLines(input: OpensshModeInput): string[] {
  const startups = input.startups ?? { maxStartups: '128:30:512', perSource: 32, loginGraceSeconds: 15 };
  return [
    '# Connections not yet authenticated (global: these govern every user of this sshd).',
    `MaxStartups ${startups.maxStartups}`,
    `PerSourceMaxStartups ${startups.perSource}`,
    'PerSourceNetBlockSize 32:64',
    `LoginGraceTime ${startups.loginGraceSeconds}`,
  ];
}

function matchBlock(user: string, comment: string, lines: readonly string[]): string {
  return [`# ${comment}`, `Match User ${user}`, ...lines.map((line) => `    ${line}`)].join('\n');
}

export function renderSshdConfig(input: OpensshModeInput): string {
  const { deviceUser, operatorUser } = checkInput(input);
  const config = join(input.outDir, OPENSSH_FILES.config);
  const header = `# certunnel OpenSSH mode: generated by the broker, rewritten on every change; do not edit.
#
# The system sshd_config must include this file BEFORE its first Match block
# (an Include inside a Match block is conditional, and for each keyword sshd
# keeps the first value it reads, so an earlier matching block would win):
#
#     Include ${config}
#
# (Debian includes /etc/ssh/sshd_config.d/*.conf first: a symlink named
# certunnel.conf there does it.)
# The admin must also:
# - list the system's own host keys with HostKey lines in sshd_config if it has
#   none yet: sshd loads its default host keys only when no HostKey is
#   configured, and this file configures one;
# - create the users ${deviceUser} and ${operatorUser} (a nologin shell is fine: they
#   never get a session). With UsePAM no, sshd refuses a locked account, so
#   their password field must be "*", not "!" (usermod -p '*' <user>);
# - keep ${input.outDir} owned by root and not group/world-writable (StrictModes),
#   yet searchable by both users down from /: sshd opens the principals files
#   with the connecting user's uid, and an unreadable one refuses everybody.
#
# Global part: HostKey and HostCertificate are not allowed after Match.
HostKey ${input.hostKeyPath}
HostCertificate ${join(input.outDir, input.hostCertificateFile ?? OPENSSH_FILES.hostCertificate)}
${startupLines(input).join('\n')}
`;
  const device = matchBlock(deviceUser, `Devices: a remote forward on ${TUNNEL_HOST} of their own ports (principals.devices), nothing else.`, [
    'AllowTcpForwarding remote',
    'PermitOpen none',
    ...lockdown(input, OPENSSH_FILES.devicePrincipals),
  ]);
  const operator = matchBlock(operatorUser, `Operators: direct-tcpip to one device's ports on ${TUNNEL_HOST} (principals.operators), nothing else.`, [
    'AllowTcpForwarding local',
    'PermitListen none',
    ...lockdown(input, OPENSSH_FILES.operatorPrincipals),
  ]);
  // The Match context ends with the included file (measured: a keyword after
  // the Include line in the main config is global again).
  return `${header}\n${device}\n\n${operator}\n`;
}

/**
 * TrustedUserCAKeys: one key per line, each CA once. sshd reads the file at
 * every login, so rewriting it (atomically) changes what logs in without a
 * reload.
 */
export function renderTrustedUserCas(keys: readonly PublicKey[]): string {
  const lines: string[] = [];
  for (const key of keys) {
    const line = formatPublicKey(key, 'certunnel-user-ca');
    if (!lines.includes(line)) lines.push(line);
  }
  return `${lines.join('\n')}\n`;
}

/** Every file of OpenSSH mode, by name relative to outDir. Pure. */
export function renderOpensshFiles(input: OpensshModeInput): Map<string, OpensshFile> {
  const config = renderSshdConfig(input); // validates the input first
  // Insertion order is write order: everything the config references exists
  // before the config that references it.
  // Modes: sshd reads the config, CA key, host certificate and KRL as root
  // (its privileged monitor), so they are the owner's alone; it opens the
  // principals files with the connecting user's uid, so they must be 0644.
  return new Map<string, OpensshFile>([
    [OPENSSH_FILES.krl, { content: input.krl, mode: 0o600 }],
    [OPENSSH_FILES.userCa, { content: renderTrustedUserCas(input.userCaKeys), mode: 0o600 }],
    [input.hostCertificateFile ?? OPENSSH_FILES.hostCertificate, { content: `${input.hostCertificate.trim()}\n`, mode: 0o600 }],
    [OPENSSH_FILES.devicePrincipals, { content: renderPrincipals(input.pool, 'devices'), mode: 0o644 }],
    [OPENSSH_FILES.operatorPrincipals, { content: renderPrincipals(input.pool, 'operators'), mode: 0o644 }],
    [OPENSSH_FILES.config, { content: config, mode: 0o600 }],
  ]);
}

/**
 * The host key the broker presents, as a file of outDir named after the key
 * and its certificate (host_key-<key>-<certificate>, 0600; the first 16 hex
 * digits of each SHA-256): a rotation writes new files beside the ones the
 * running sshd was started with, which stay until it has reloaded (sshd
 * 9.2's per-connection processes read the host key files anew). Returns the
 * key's path and the certificate's name for OpensshModeInput.
 */
export async function writeHostKeyFile(outDir: string, hostKey: KeyPair, hostCertificate: string): Promise<{ hostKeyPath: string; hostCertificateFile: string }> {
  const id = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex').slice(0, 16);
  const name = `host_key-${id(publicKeyBlob(hostKey.publicKey))}-${id(hostCertificate.trim())}`;
  await mkdir(outDir, { recursive: true, mode: 0o755 });
  const hostKeyPath = join(outDir, name);
  await writeFileAtomic(hostKeyPath, encodePrivateKey(hostKey, { comment: 'certunnel broker host key' }), { mode: 0o600 });
  return { hostKeyPath, hostCertificateFile: `${name}-cert.pub` };
}

/** The host key files of outDir (writeHostKeyFile's) other than KEEP's: what a confirmed sshd reload leaves unused. */
export async function staleHostKeyFiles(outDir: string, keep: { hostKeyPath: string; hostCertificateFile: string }): Promise<string[]> {
  const names = await readdir(outDir).catch(() => [] as string[]);
  const current = new Set([basename(keep.hostKeyPath), keep.hostCertificateFile]);
  return names.filter((n) => /^host_key-[0-9a-f]{16}-[0-9a-f]{16}(-cert\.pub)?$/.test(n) && !current.has(n)).map((n) => join(outDir, n));
}

/** Writes every file atomically, in dependency order; returns the absolute paths written. */
export async function writeOpensshFiles(input: OpensshModeInput): Promise<string[]> {
  const files = renderOpensshFiles(input);
  await mkdir(input.outDir, { recursive: true, mode: 0o755 });
  const written: string[] = [];
  for (const [name, file] of files) {
    const path = join(input.outDir, name);
    await writeFileAtomic(path, file.content, { mode: file.mode });
    written.push(path);
  }
  return written;
}
