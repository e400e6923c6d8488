/**
 * Adding a node to a cluster without copying key files by hand:
 *
 * - `certunnel node token --data DIR` on a node's host reads its data
 *   directory (CA key files as they are on disk, still passphrase-encrypted
 *   if they are; the host key and certificate; the API's TLS identity and
 *   pin; the proxy's session key; config.json) and stores them sealed under
 *   a fresh single-use join token (core/join-token.ts), printed once;
 * - `certunnel join --data NEWDIR --database-url URL --token T` checks
 *   that the database holds a fleet, redeems the token (compare-and-swap:
 *   single use, before expiry), opens the sealed files and writes a
 *   complete data directory with init's modes, staged and moved into place
 *   as init does (data-dir.ts stageDataDir). The redemption and the writing
 *   are one transaction: a blob that does not open, or a directory that
 *   cannot be written, leaves the token unused and nothing on disk.
 *
 * The files never cross the network in plaintext: the database carries
 * ciphertext, the token travels by whatever channel the operator trusts.
 */
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { writeFileAtomic } from '../../ca/index.js';
import { BrokerError } from '../core/errors.js';
import { joinTokenHash, joinTokenInvalid, newJoinToken, parseJoinToken, sealFiles, unsealFiles, type SealedFile } from '../core/join-token.js';
import { isPlainObject, merge, parseConfig, type PlainObject } from '../core/config.js';
import { loadOrCreateSessionSecret } from '../proxy/session-cookie.js';
import { openStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import { dataPaths, makeDataSubdirs, stageDataDir, type DataPaths } from './data-dir.js';
import { loadConfig } from './load-config.js';
import { newNodeIdentity, writeNodeIdentity } from './node-identity.js';
import { checkDatabaseUrl, databaseUrlOf, writeDatabaseUrl } from './store-location.js';

/** Who mints tokens in the audit trail (a command on a node's host, as `apikey create --local`). */
const LOCAL_ACTOR = 'local-cli';
export const DEFAULT_JOIN_TTL_SECONDS = 3600;
export const MAX_JOIN_TTL_SECONDS = 7 * 86400;

/** The files a joining node receives, with the modes init gives them; nothing else is ever sealed or written. */
function clusterFiles(paths: DataPaths): ReadonlyArray<{ path: string; mode: number }> {
  return [
    { path: paths.userCa, mode: 0o600 }, { path: `${paths.userCa}.pub`, mode: 0o644 },
    { path: paths.hostCa, mode: 0o600 }, { path: `${paths.hostCa}.pub`, mode: 0o644 },
    { path: paths.hostKey, mode: 0o600 }, { path: `${paths.hostKey}.pub`, mode: 0o644 }, { path: paths.hostCert, mode: 0o644 },
    { path: paths.tlsKey, mode: 0o600 }, { path: paths.tlsCert, mode: 0o644 }, { path: paths.apiPin, mode: 0o644 },
    { path: paths.proxySessionKey, mode: 0o600 },
    { path: paths.config, mode: 0o600 },
  ];
}

export interface MintJoinTokenOptions {
  readonly dataDir: string;
  readonly ttlSeconds?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly now?: Date;
}

export interface MintedJoinToken {
  readonly id: string;
  /** `cjt_…`: shown once. */
  readonly token: string;
  readonly expiresAt: string;
}

async function withStore<T>(location: { filename: string; databaseUrl: string }, fn: (store: Store) => Promise<T>, readonly = false): Promise<T> {
  const store = await openStore({ ...location, readonly });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export async function mintJoinToken(o: MintJoinTokenOptions): Promise<MintedJoinToken> {
  const ttl = o.ttlSeconds ?? DEFAULT_JOIN_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl < 60 || ttl > MAX_JOIN_TTL_SECONDS) throw new BrokerError('BAD_REQUEST', `the join token's lifetime must be 60 s to ${MAX_JOIN_TTL_SECONDS / 86400} days`);
  await loadConfig({ dataDir: o.dataDir, env: o.env });
  const paths = dataPaths(o.dataDir);
  const databaseUrl = await databaseUrlOf(paths, o.env);
  if (databaseUrl === undefined) {
    throw new BrokerError('NOT_A_CLUSTER', `${o.dataDir} keeps its store in SQLite: a single node. A cluster needs PostgreSQL (certunnel init --database-url)`);
  }
  // Made by the broker on its first start; a node that never started makes it now, so that every node shares it.
  await loadOrCreateSessionSecret(paths.proxySessionKey);
  const files: SealedFile[] = [];
  for (const f of clusterFiles(paths)) files.push({ path: relative(o.dataDir, f.path), mode: f.mode, data: await readFile(f.path) });
  const token = newJoinToken();
  const now = o.now ?? new Date();
  const expiresAt = new Date(now.getTime() + ttl * 1000);
  await withStore({ filename: paths.database, databaseUrl }, (store) =>
    store.transaction(async (tx) => {
      await tx.insertNodeJoinToken({ id: token.id, tokenHash: joinTokenHash(token), sealed: sealFiles(files, token), createdAt: now, createdBy: LOCAL_ACTOR, expiresAt });
      await tx.appendAudit({ at: now, actor: LOCAL_ACTOR, action: 'node.token', target: token.id, remoteAddr: null, outcome: 'ok', details: { expiresAt: expiresAt.toISOString() } });
    }),
  );
  return { id: token.id, token: token.token, expiresAt: expiresAt.toISOString() };
}

export interface JoinOptions {
  readonly dir: string;
  readonly databaseUrl: string;
  readonly token: string;
  /** Config fields of this node over the cluster's config.json (e.g. api.listen, ssh.listen, ssh.publicHost). */
  readonly config?: PlainObject;
  readonly now?: Date;
}

export interface JoinResult {
  readonly nodeId: string;
  readonly nodeName: string;
  readonly tokenId: string;
  readonly files: number;
}

/** Whether the database holds a fleet: a current schema and an initialised broker in it. Opened read-only: a wrong database is left untouched. */
async function checkCluster(location: { filename: string; databaseUrl: string }): Promise<void> {
  const notACluster = (): BrokerError =>
    new BrokerError('NOT_A_CLUSTER', 'the database holds no certunnel fleet; give the URL of the database the cluster\'s nodes use (or certunnel init a new one)');
  let fleet: boolean;
  try {
    fleet = await withStore(location, async (store) => (await store.countAudit()) > 0, true);
  } catch (err) {
    if (err instanceof BrokerError && err.code === 'CONFIG_INVALID' && /not initialized/.test(err.message)) throw notACluster();
    throw err;
  }
  if (!fleet) throw notACluster();
}

/** The sealed files, each one of clusterFiles' (anything else is refused), written into STAGING with its mode. */
async function writeSealedFiles(staging: string, files: readonly SealedFile[], overrides: PlainObject): Promise<void> {
  const allowed = new Map(clusterFiles(dataPaths('.')).map((f) => [relative('.', f.path), f.mode]));
  const config = relative('.', dataPaths('.').config);
  if (files.length !== allowed.size || files.some((f) => !allowed.has(f.path))) {
    throw new BrokerError('NODE_TOKEN_SEAL_INVALID', 'the sealed files are not a data directory\'s; nothing was written');
  }
  await makeDataSubdirs(staging);
  for (const f of files) {
    if (f.path === config) continue;
    await writeFileAtomic(join(staging, f.path), f.data, { mode: allowed.get(f.path)! });
  }
  const cluster = JSON.parse(files.find((f) => f.path === config)!.data.toString('utf8')) as unknown;
  if (!isPlainObject(cluster)) throw new BrokerError('CONFIG_INVALID', "the cluster's config.json is not a JSON object");
  const mine = merge(cluster, overrides);
  parseConfig(mine, staging);
  await writeFileAtomic(join(staging, config), `${JSON.stringify(mine, null, 2)}\n`, { mode: 0o600 });
}

/**
 * Makes DIR a node of the cluster in DATABASEURL (see the file comment).
 * Refuses, changing nothing: NODE_TOKEN_INVALID, NODE_TOKEN_SEAL_INVALID,
 * DATA_DIR_EXISTS, NOT_A_CLUSTER, CONFIG_INVALID (an override or the URL).
 */
export async function joinCluster(o: JoinOptions): Promise<JoinResult> {
  const token = parseJoinToken(o.token);
  const databaseUrl = checkDatabaseUrl(o.databaseUrl);
  const identity = newNodeIdentity();
  const now = o.now ?? new Date();
  return stageDataDir(o.dir, async (staging) => {
    const paths = dataPaths(staging);
    const location = { filename: paths.database, databaseUrl };
    await checkCluster(location);
    const files = await withStore(location, (store) =>
      store.transaction(async (tx) => {
        const sealed = await tx.redeemNodeJoinToken(joinTokenHash(token), identity.id, now);
        if (sealed === null) throw joinTokenInvalid();
        const opened = unsealFiles(sealed, token);
        await writeSealedFiles(staging, opened, o.config ?? {});
        await tx.appendAudit({ at: now, actor: `node:${identity.id}`, action: 'node.join', target: identity.id, remoteAddr: null, outcome: 'ok', details: { name: identity.name, token: token.id } });
        return opened.length;
      }),
    );
    await writeDatabaseUrl(paths, databaseUrl);
    await writeNodeIdentity(paths, identity);
    return { nodeId: identity.id, nodeName: identity.name, tokenId: token.id, files };
  });
}
