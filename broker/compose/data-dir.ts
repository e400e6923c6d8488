/**
 * The broker's data directory: layout, and `init`, which creates everything
 * a broker needs on its embedded defaults — config, SQLite database, user
 * and host CAs, SSH host key and host certificate, the API's TLS identity, an
 * empty KRL, and a first admin API key (printed once, stored hashed).
 */
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import {
  encodeKrl, fingerprint, formatCertificate, formatPublicKey, generateKeyPair, saveKeyPair, signHostCert, writeFileAtomic,
} from '../../ca/index.js';
import { parseConfig, splitHostPort, type BrokerConfig } from '../core/config.js';
import { createApiKey } from '../core/api-keys.js';
import { BrokerError } from '../core/errors.js';
import { isWildcardAddress } from '../core/net-address.js';
import { openStore } from '../store/index.js';
import { writeDatabaseUrl } from './store-location.js';
import { generateTlsIdentity } from './tls.js';

export interface DataPaths {
  readonly config: string;
  readonly database: string;
  /** PostgreSQL instead of the SQLite file: the database URL (0600; compose/store-location.ts). */
  readonly databaseUrl: string;
  readonly userCa: string;
  readonly hostCa: string;
  readonly hostKey: string;
  readonly hostCert: string;
  readonly tlsKey: string;
  readonly tlsCert: string;
  readonly apiPin: string;
  readonly krl: string;
  /** Written by a running broker: its pid and the addresses it actually bound (ports may be ephemeral). */
  readonly runtime: string;
  /** HMAC key of the HTTP proxy's login sessions (0600); made by the broker on first start. */
  readonly proxySessionKey: string;
  /** This broker node's identity in a cluster (compose/node-identity.ts); made on first start. */
  readonly node: string;
  /** HMAC key of the console's sessions (0600); made by the broker on first start. */
  readonly consoleSessionKey: string;
}

export function dataPaths(dir: string): DataPaths {
  return {
    config: join(dir, 'config.json'),
    database: join(dir, 'broker.sqlite'),
    databaseUrl: join(dir, 'database.url'),
    userCa: join(dir, 'ca', 'user_ca'),
    hostCa: join(dir, 'ca', 'host_ca'),
    hostKey: join(dir, 'ssh', 'host_key'),
    hostCert: join(dir, 'ssh', 'host_key-cert.pub'),
    tlsKey: join(dir, 'tls', 'api.key'),
    tlsCert: join(dir, 'tls', 'api.crt'),
    apiPin: join(dir, 'tls', 'api.pin'),
    krl: join(dir, 'revoked.krl'),
    runtime: join(dir, 'broker.runtime.json'),
    proxySessionKey: join(dir, 'tls', 'proxy-session.key'),
    node: join(dir, 'node.json'),
    consoleSessionKey: join(dir, 'tls', 'console-session.key'),
  };
}

/** Names the broker's certificates are valid for: what devices and operators dial. */
export function brokerHostnames(config: BrokerConfig): string[] {
  const names = new Set<string>([config.domain, 'localhost', '127.0.0.1']);
  if (config.ssh.publicHost) names.add(config.ssh.publicHost);
  const apiHost = splitHostPort(config.api.listen).host;
  if (!isWildcardAddress(apiHost)) names.add(apiHost);
  if (config.api.publicUrl) names.add(new URL(config.api.publicUrl).hostname);
  return [...names];
}

/**
 * Names the API's TLS certificate covers: the broker's names and
 * `*.<domain>`, the hostnames of the HTTP proxy (one label deep, RFC 6125
 * section 6.4.3), served on the same port.
 */
export function tlsHostnames(config: BrokerConfig): string[] {
  return [...brokerHostnames(config), `*.${config.domain}`];
}

export interface InitOptions {
  readonly dir: string;
  /** Config fields to write (validated before anything is created). */
  readonly config: Record<string, unknown>;
  /** Encrypts the CA private keys; never written to the config. */
  readonly passphrase?: string;
  /** The store in this (empty) PostgreSQL database instead of SQLite (several broker nodes). */
  readonly databaseUrl?: string;
  readonly now?: Date;
}

export interface InitResult {
  readonly config: BrokerConfig;
  readonly adminKey: string;
  readonly apiPin: string;
  readonly userCaFingerprint: string;
  readonly hostCaFingerprint: string;
}

/** Whether DIR exists (and is empty); a non-empty one is refused. */
async function existingEmptyDir(dir: string): Promise<boolean> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  if (entries.length > 0) throw dataDirExists(dir);
  return true;
}

function dataDirExists(dir: string): BrokerError {
  return new BrokerError(
    'DATA_DIR_EXISTS',
    `${dir} is not empty; refusing to initialise over an existing broker. Run it with: certunnel broker --data ${dir}; or initialise another with --data <new directory>`,
  );
}

/** The data directory's subdirectories (keys inside): 0700, as the directory itself. */
export async function makeDataSubdirs(dir: string): Promise<void> {
  for (const sub of ['ca', 'ssh', 'tls']) await mkdir(join(dir, sub), { mode: 0o700 });
}

/** Everything init creates, written into STAGING (the final directory is DIR, whose name the certificates do not depend on). */
async function buildDataDir(staging: string, config: BrokerConfig, options: InitOptions, now: Date): Promise<InitResult> {
  const paths = dataPaths(staging);
  await makeDataSubdirs(staging);

  const userCa = generateKeyPair();
  const hostCa = generateKeyPair();
  const hostKey = generateKeyPair();
  await saveKeyPair(paths.userCa, userCa, { passphrase: options.passphrase, comment: 'certunnel user CA' });
  await saveKeyPair(paths.hostCa, hostCa, { passphrase: options.passphrase, comment: 'certunnel host CA' });
  await saveKeyPair(paths.hostKey, hostKey, { comment: 'certunnel broker host key' });

  const tls = generateTlsIdentity(tlsHostnames(config), now);
  await writeFileAtomic(paths.tlsKey, tls.keyPem, { mode: 0o600 });
  await writeFileAtomic(paths.tlsCert, tls.certPem, { mode: 0o644 });
  await writeFileAtomic(paths.apiPin, `${tls.pin}\n`, { mode: 0o644 });
  await writeFileAtomic(paths.krl, encodeKrl({ caKey: userCa.publicKey, version: 0n, generatedAt: now }), { mode: 0o644 });

  if (options.databaseUrl !== undefined) await writeDatabaseUrl(paths, options.databaseUrl);
  const store = await openStore(options.databaseUrl === undefined ? { filename: paths.database } : { filename: paths.database, databaseUrl: options.databaseUrl });
  let adminKey: string;
  try {
    // A database that already holds a fleet is another cluster's (or this one's): a new node joins it instead.
    if ((await store.countAudit()) > 0) {
      throw new BrokerError('DATABASE_IN_USE', 'the database already holds a certunnel fleet; add a node to it with certunnel join, or give an empty database');
    }
    const serial = await store.nextSerial();
    const hostCert = signHostCert({ hostCa, publicKey: hostKey.publicKey, hostnames: brokerHostnames(config), serial, now });
    await writeFileAtomic(paths.hostCert, `${formatCertificate(hostCert, 'certunnel broker host certificate')}\n`, { mode: 0o644 });
    const actor = { id: 'system', remoteAddr: null };
    adminKey = (await createApiKey(store, { role: 'admin', name: 'initial-admin' }, actor, now)).key;
    await store.appendAudit({
      at: now, actor: 'system', action: 'broker.init', target: null, remoteAddr: null, outcome: 'ok',
      details: { userCa: fingerprint(userCa.publicKey), hostCa: fingerprint(hostCa.publicKey), hostKey: formatPublicKey(hostKey.publicKey) },
    });
  } finally {
    await store.close();
  }
  await writeFile(paths.config, `${JSON.stringify(options.config, null, 2)}\n`, { mode: 0o600 });
  return {
    config, adminKey, apiPin: tls.pin, userCaFingerprint: fingerprint(userCa.publicKey), hostCaFingerprint: fingerprint(hostCa.publicKey),
  };
}

/**
 * Moves a built data directory into place. A missing DIR is one rename of
 * its sibling staging directory. An existing empty DIR (a mount point, which
 * cannot be renamed over) receives the staged entries one by one, config.json
 * last: its presence marks a complete data directory.
 */
async function commitDataDir(staging: string, dir: string, existing: boolean): Promise<void> {
  if (!existing) {
    await rename(staging, dir).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOTEMPTY' || err.code === 'EEXIST' ? dataDirExists(dir) : err;
    });
    return;
  }
  const config = basename(dataPaths(dir).config);
  const entries = (await readdir(staging)).filter((e) => e !== config);
  const moved: string[] = [];
  try {
    for (const entry of [...entries, config]) {
      await rename(join(staging, entry), join(dir, entry));
      moved.push(entry);
    }
  } catch (err) {
    for (const entry of moved) await rm(join(dir, entry), { recursive: true, force: true });
    throw err;
  }
  await rm(staging, { recursive: true, force: true });
}

/**
 * Creates a data directory, atomically: everything is built in a staging
 * directory (beside DIR, or inside it when DIR is an existing empty
 * directory) and moved into place at the end; a failure removes the staging
 * directory, so a retry starts from nothing rather than DATA_DIR_EXISTS.
 */
export async function initDataDir(options: InitOptions): Promise<InitResult> {
  const now = options.now ?? new Date();
  const config = parseConfig(options.config, options.dir);
  return stageDataDir(options.dir, (staging) => buildDataDir(staging, config, options, now));
}

/**
 * Builds a data directory with BUILD in a staging directory and moves it
 * into place (init, and join: compose/node-join.ts). DIR must be missing or
 * empty (else DATA_DIR_EXISTS, before BUILD runs); whatever BUILD throws
 * removes the staging directory and leaves DIR as it was.
 */
export async function stageDataDir<T>(dir: string, build: (staging: string) => Promise<T>): Promise<T> {
  const target = resolve(dir);
  const existing = await existingEmptyDir(target);
  if (!existing) await mkdir(dirname(target), { recursive: true });
  // mkdtemp makes the staging directory 0700, as the data directory must be.
  const staging = await mkdtemp(existing ? join(target, '.init-') : join(dirname(target), `.${basename(target)}.init-`));
  try {
    const result = await build(staging);
    await commitDataDir(staging, target, existing);
    return result;
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
}

/** The API's URL on this host, from its listen address and PORT (the one bound, when the configured port is 0). */
export function localApiUrl(config: BrokerConfig, port: number): string {
  const { host } = splitHostPort(config.api.listen);
  return `${config.api.insecureHttp ? 'http' : 'https'}://${isWildcardAddress(host) ? '127.0.0.1' : host}:${port}`;
}
