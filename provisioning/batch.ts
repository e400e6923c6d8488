/**
 * `provision batch`: mint a batch of enrollment tokens in one request and
 * write one config bundle per device, plus the manifest.
 *
 * Crash safety, in the order things happen:
 *
 *   1. manifest.pendingMint = {count}; write manifest       (a mint may be in flight)
 *   2. POST /v1/tokens (one request, one broker transaction)
 *   3. record ids in the device slots ("minted"), clear pendingMint; write manifest
 *   4. write each bundle (0600, atomic)                      (secrets exist only here and in memory)
 *   5. mark the slots "written", status complete; write manifest
 *
 * A re-run of the same --batch/--out first reconciles with the broker's own
 * list of the batch (GET /v1/tokens?batch=): a "minted" slot whose bundle is
 * on disk with its token id is recovered; one whose bundle is not has lost
 * its secret, so the token is revoked and recorded in `discarded`, and the
 * slot is minted again; tokens of the batch that the manifest does not know,
 * while pendingMint is set, come from a request whose answer was lost: they
 * are revoked too. Then only the missing devices are minted. Afterwards the
 * manifest again lists every token of the batch.
 */
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError } from '../api/client.js';
import { DEVICE_NAME } from '../api/tunnel.js';
import { fingerprint, parsePublicKey, writeFileAtomic } from '../ca/index.js';
import {
  BUNDLE_FORMAT, DEFAULT_STATE_DIR, buildAgentConfig, parseBundle, renderBundle,
  type BrokerCaResponse, type BrokerInfo, type DeviceBundle,
} from './bundle.js';
import { ProvisionError } from './errors.js';
import {
  MANIFEST_FORMAT, manifestPaths, readManifest, writeManifest,
  type BatchSettings, type DiscardedToken, type ManifestDevice, type TokenStatus,
} from './manifest.js';

/** One call to the broker API with the provisioner's key and the pin already bound. Throws ApiError. */
export type BrokerCall = <T>(method: string, path: string, body?: unknown) => Promise<T>;

export interface BatchOptions {
  readonly outDir: string;
  readonly batch: string;
  /** How many devices the batch holds in total (a re-run mints only the missing ones). */
  readonly count?: number;
  /** One hardware serial per device: token i is bound to serials[i]. */
  readonly serials?: readonly string[];
  /** Device names PREFIX-0001…, bound to the tokens. */
  readonly namePrefix?: string;
  readonly ttlSeconds?: number;
  /** The broker URL devices use (default: the URL the factory uses). */
  readonly deviceUrl: string;
  /** The pin devices use (default: the pin the factory connected with, else the broker's apiPin). */
  readonly devicePin?: string | null;
  readonly services?: Readonly<Record<string, unknown>>;
  readonly template?: Readonly<Record<string, unknown>>;
  readonly stateDir?: string;
}

export interface BatchDeps {
  readonly api: BrokerCall;
  /** The API URL and the pin the factory's own connection is verified with. */
  readonly apiUrl: string;
  readonly connectionPin?: string | null;
  readonly now?: () => Date;
  /** Test hooks: throwing from one simulates a crash at that point (never set by the CLI). */
  readonly faults?: {
    readonly afterMint?: () => void | Promise<void>;
    readonly afterBundle?: (index: number) => void | Promise<void>;
  };
}

export interface BatchReport {
  readonly batch: string;
  readonly outDir: string;
  readonly manifest: string;
  readonly csv: string;
  readonly devices: number;
  readonly mintedNow: number;
  readonly alreadyWritten: number;
  /** Minted in an interrupted run and found intact on disk. */
  readonly recovered: number;
  /** Revoked in this run because their secrets were lost. */
  readonly discardedNow: readonly DiscardedToken[];
  readonly foreign: readonly string[];
  /** Written earlier, file gone since (flashed and shredded?): left alone. */
  readonly bundlesMissing: readonly number[];
  /** The first and last bundle paths (relative to outDir). */
  readonly bundles: readonly string[];
  readonly earliestExpiry: string | null;
}

interface TokenView {
  id: string;
  batch: string | null;
  bindName: string | null;
  bindSerial: string | null;
  status: Exclude<TokenStatus, 'unknown'>;
  expiresAt: string;
}

interface MintResponse {
  batch: string | null;
  tokens: Array<{ id: string; token: string; batch: string | null; bindName: string | null; bindSerial: string | null; expiresAt: string }>;
}

const BATCH_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const SERIAL = /^[\x21-\x7e]{1,128}$/;

/** Reads a serials file: one per line; blank lines and #comments skipped. */
export async function readSerialsFile(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new ProvisionError('BAD_ARGUMENT', `cannot read ${path}: ${err.code ?? String(err)}`);
  });
  const serials = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const seen = new Set<string>();
  for (const [i, s] of serials.entries()) {
    if (!SERIAL.test(s)) throw new ProvisionError('BAD_ARGUMENT', `${path}: serial ${i + 1} must be 1-128 printable ASCII characters without spaces`);
    if (seen.has(s)) throw new ProvisionError('BAD_ARGUMENT', `${path}: serial ${s} appears twice`);
    seen.add(s);
  }
  if (serials.length === 0) throw new ProvisionError('BAD_ARGUMENT', `${path} lists no serials`);
  return serials;
}

function pad(index: number, width: number): string {
  return String(index).padStart(width, '0');
}

interface Slot {
  readonly index: number;
  readonly name: string | null;
  readonly serial: string | null;
}

function planSlots(options: BatchOptions): Slot[] {
  const count = options.count ?? options.serials?.length;
  if (count === undefined || !Number.isInteger(count) || count < 1) throw new ProvisionError('BAD_ARGUMENT', 'give --count N (a positive integer) or --bind-serials FILE');
  if (options.serials && options.serials.length !== count) {
    throw new ProvisionError('BAD_ARGUMENT', `--count ${count} does not match the ${options.serials.length} serials given`);
  }
  const width = Math.max(4, String(count).length);
  return Array.from({ length: count }, (_, i) => {
    const name = options.namePrefix ? `${options.namePrefix}-${pad(i + 1, width)}` : null;
    if (name !== null && !DEVICE_NAME.test(name)) throw new ProvisionError('BAD_ARGUMENT', `device name ${name} is not a DNS label (--name-prefix)`);
    return { index: i + 1, name, serial: options.serials?.[i] ?? null };
  });
}

function settingsOf(options: BatchOptions, devicePin: string | null): BatchSettings {
  return {
    deviceUrl: options.deviceUrl,
    devicePin,
    namePrefix: options.namePrefix ?? null,
    ttlSeconds: options.ttlSeconds ?? null,
    stateDir: options.stateDir ?? DEFAULT_STATE_DIR,
    services: { ...(options.services ?? {}) },
    template: { ...(options.template ?? {}) },
  };
}

const canonical = (v: unknown): string => JSON.stringify(v, (_k, value: unknown) =>
  value && typeof value === 'object' && !Array.isArray(value) ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b))) : value);

/** One batch run per output directory at a time. A lock left by a dead process is taken over. */
async function lockOutDir(outDir: string): Promise<() => Promise<void>> {
  const path = join(outDir, '.batch.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return () => unlink(path).catch(() => undefined);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    let alive = false;
    if (Number.isInteger(pid) && pid > 0) {
      try {
        process.kill(pid, 0);
        alive = true;
      } catch (err) {
        alive = (err as NodeJS.ErrnoException).code === 'EPERM';
      }
    }
    if (alive) throw new ProvisionError('BATCH_LOCKED', `another batch run (pid ${pid}) is writing ${outDir}`);
    await unlink(path).catch(() => undefined);
  }
  throw new ProvisionError('BATCH_LOCKED', `cannot take ${path}`);
}

async function listBatchTokens(api: BrokerCall, batch: string): Promise<TokenView[]> {
  const out: TokenView[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ batch, limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const page: { items: TokenView[]; nextCursor: string | null } = await api('GET', `/v1/tokens?${q.toString()}`);
    out.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

/** The bundle at PATH, if it is the one minted for DEVICE (same token id and slot). */
async function bundleOnDisk(path: string, device: ManifestDevice, batch: string): Promise<DeviceBundle | null> {
  try {
    const bundle = parseBundle(JSON.parse(await readFile(path, 'utf8')), path);
    return bundle.tokenId === device.tokenId && bundle.index === device.index && bundle.batch === batch ? bundle : null;
  } catch {
    return null;
  }
}

export async function runBatch(options: BatchOptions, deps: BatchDeps): Promise<BatchReport> {
  const now = deps.now ?? (() => new Date());
  if (!BATCH_NAME.test(options.batch)) throw new ProvisionError('BAD_ARGUMENT', '--batch: 1-64 letters, digits, dot, underscore, hyphen');
  if (options.ttlSeconds !== undefined && (!Number.isInteger(options.ttlSeconds) || options.ttlSeconds < 60)) {
    throw new ProvisionError('BAD_ARGUMENT', '--ttl must be a whole number of seconds, at least 60');
  }
  const slots = planSlots(options);
  const { outDir } = options;
  await mkdir(join(outDir, 'bundles'), { recursive: true, mode: 0o700 });
  const unlock = await lockOutDir(outDir);
  try {
    const ca = await deps.api<BrokerCaResponse>('GET', '/v1/ca');
    const devicePin = options.devicePin !== undefined ? options.devicePin : (deps.connectionPin ?? ca.apiPin ?? null);
    if (options.deviceUrl.startsWith('https:') && !devicePin) {
      throw new ProvisionError('BAD_ARGUMENT', 'no pin for the devices: the broker reports none; give --device-pin');
    }
    const settings = settingsOf(options, devicePin);
    // Fail before minting if the agent would refuse the config.
    buildAgentConfig({ url: settings.deviceUrl, pin: devicePin, token: 'cte_placeholder-not-a-token', name: slots[0]!.name, serial: slots[0]!.serial, services: settings.services, stateDir: settings.stateDir, template: settings.template });
    const broker: BrokerInfo = {
      url: settings.deviceUrl, pin: devicePin, ssh: { host: ca.ssh.host, port: ca.ssh.port, username: ca.ssh.username },
      hostKey: ca.hostKey, hostCertificateAuthority: ca.hostCertificateAuthority, userCertificateAuthority: ca.userCertificateAuthority,
    };
    const userCaFingerprint = fingerprint(parsePublicKey(ca.userCertificateAuthority));

    let manifest = await readManifest(outDir);
    const stamp = (): string => now().toISOString();
    if (manifest) {
      if (manifest.batch !== options.batch) throw new ProvisionError('MANIFEST_MISMATCH', `${outDir} holds batch ${manifest.batch}, not ${options.batch}`);
      if (manifest.broker.userCaFingerprint !== userCaFingerprint) {
        throw new ProvisionError('BROKER_MISMATCH', `${outDir} was minted by another broker (user CA ${manifest.broker.userCaFingerprint}, this one ${userCaFingerprint})`);
      }
      if (canonical(manifest.settings) !== canonical(settings)) {
        throw new ProvisionError('MANIFEST_MISMATCH', `${outDir} was written with other settings (device URL, pin, names, ttl, services, template, state dir); re-run with the same ones`);
      }
      // Slots never minted may be dropped; devices with tokens stay.
      const lastMinted = Math.max(0, ...manifest.devices.filter((d) => d.state !== 'pending').map((d) => d.index));
      if (slots.length < lastMinted) {
        throw new ProvisionError('MANIFEST_MISMATCH', `${outDir} already holds minted devices up to #${lastMinted}; a batch does not shrink`);
      }
      manifest.devices = manifest.devices.slice(0, slots.length);
      for (const d of manifest.devices) {
        const s = slots[d.index - 1]!;
        if (s.name !== d.name || s.serial !== d.serial) throw new ProvisionError('MANIFEST_MISMATCH', `device ${d.index} was ${d.serial ?? d.name ?? 'unbound'}, now ${s.serial ?? s.name ?? 'unbound'}`);
      }
    } else {
      // A new output directory owns its batch name: it must not exist on the broker yet,
      // or a later reconciliation could not tell its tokens from someone else's.
      const existing = await deps.api<{ items: unknown[] }>('GET', `/v1/tokens?${new URLSearchParams({ batch: options.batch, limit: '1' }).toString()}`);
      if (existing.items.length > 0) {
        throw new ProvisionError('BATCH_NOT_EMPTY', `the broker already has tokens in batch ${options.batch}; choose a new batch name (or re-run with the output directory that minted it)`);
      }
      manifest = {
        format: MANIFEST_FORMAT, batch: options.batch, status: 'incomplete',
        broker: { apiUrl: deps.apiUrl, userCaFingerprint }, settings,
        createdAt: stamp(), updatedAt: stamp(), pendingMint: null, devices: [], discarded: [], foreign: [],
      };
    }
    const width = Math.max(4, String(slots.length).length);
    for (const s of slots.slice(manifest.devices.length)) {
      manifest.devices.push({
        index: s.index, name: s.name, serial: s.serial, bundle: join('bundles', `${options.batch}-${pad(s.index, width)}.json`),
        state: 'pending', tokenId: null, expiresAt: null, tokenStatus: null,
      });
    }

    // --- Reconcile with the broker and the disk.
    const listed = new Map((await listBatchTokens(deps.api, options.batch)).map((t) => [t.id, t]));
    const toDiscard: Array<{ tokenId: string; index: number | null; reason: DiscardedToken['reason'] }> = [];
    let recovered = 0;
    const bundlesMissing: number[] = [];
    for (const d of manifest.devices) {
      if (d.state === 'pending' || !d.tokenId) continue;
      const onDisk = await bundleOnDisk(join(outDir, d.bundle), d, options.batch);
      if (d.state === 'minted') {
        if (onDisk) {
          d.state = 'written';
          recovered++;
        } else {
          toDiscard.push({ tokenId: d.tokenId, index: d.index, reason: 'secret-lost' });
          Object.assign(d, { state: 'pending', tokenId: null, expiresAt: null, tokenStatus: null });
          continue;
        }
      } else if (!onDisk) {
        bundlesMissing.push(d.index);
      }
      d.tokenStatus = listed.get(d.tokenId)?.status ?? 'unknown';
    }
    const known = new Set<string>([...manifest.devices.flatMap((d) => (d.tokenId ? [d.tokenId] : [])), ...manifest.discarded.map((d) => d.tokenId), ...toDiscard.map((d) => d.tokenId)]);
    const unknown = [...listed.keys()].filter((id) => !known.has(id) && !manifest!.foreign.includes(id));
    if (manifest.pendingMint) {
      for (const id of unknown) toDiscard.push({ tokenId: id, index: null, reason: 'response-lost' });
    } else {
      manifest.foreign.push(...unknown);
    }
    const discardedNow: DiscardedToken[] = [];
    for (const d of toDiscard) {
      const before = listed.get(d.tokenId);
      let status: TokenStatus = before?.status ?? 'unknown';
      if (status === 'active') {
        const res = await deps.api<{ revoked: number }>('POST', '/v1/tokens/revoke', { id: d.tokenId });
        if (res.revoked === 1) status = 'revoked';
      }
      discardedNow.push({ ...d, status, at: stamp() });
    }
    manifest.discarded.push(...discardedNow);
    manifest.pendingMint = null;
    manifest.updatedAt = stamp();
    await writeManifest(outDir, manifest);

    // --- Mint what is missing, in one request.
    const missing = manifest.devices.filter((d) => d.state === 'pending');
    const alreadyWritten = manifest.devices.length - missing.length;
    const secrets = new Map<number, string>();
    if (missing.length > 0) {
      manifest.pendingMint = { count: missing.length, requestedAt: stamp() };
      await writeManifest(outDir, manifest);
      let res: MintResponse;
      try {
        res = await deps.api<MintResponse>('POST', '/v1/tokens', {
          count: missing.length, batch: options.batch, ttlSeconds: options.ttlSeconds,
          bindNames: options.namePrefix ? missing.map((d) => d.name) : undefined,
          bindSerials: options.serials ? missing.map((d) => d.serial) : undefined,
        });
      } catch (err) {
        // A refusal (4xx) minted nothing: the broker mints in one transaction. Anything else may have.
        if (err instanceof ApiError && err.status !== undefined && err.status < 500) {
          manifest.pendingMint = null;
          await writeManifest(outDir, manifest);
          throw new ProvisionError('MINT_FAILED', `the broker refused to mint: ${err.code}: ${err.message}`, 1, { cause: err });
        }
        const code = err instanceof ApiError ? err.code : 'ERROR';
        throw new ProvisionError('MINT_FAILED', `the mint request failed (${code}); tokens may exist without their secrets: re-run the same command to revoke them and finish`, 1, { cause: err });
      }
      const ok = res.tokens.length === missing.length && res.tokens.every((t, i) =>
        /^tok_[a-z2-7]+$/.test(t.id) && t.batch === options.batch && t.bindName === (options.namePrefix ? missing[i]!.name : null) && t.bindSerial === (options.serials ? missing[i]!.serial : null));
      if (!ok) throw new ProvisionError('MINT_FAILED', 'the broker answered the mint with other tokens than asked for; re-run to revoke them');
      for (const [i, t] of res.tokens.entries()) {
        const d = missing[i]!;
        Object.assign(d, { state: 'minted', tokenId: t.id, expiresAt: t.expiresAt, tokenStatus: 'active' });
        secrets.set(d.index, t.token);
      }
      manifest.pendingMint = null;
      manifest.updatedAt = stamp();
      await writeManifest(outDir, manifest);
      await deps.faults?.afterMint?.();

      // --- Bundles (the only place the secrets are written).
      for (const d of missing) {
        const bundle: DeviceBundle = {
          format: BUNDLE_FORMAT, batch: options.batch, index: d.index, tokenId: d.tokenId!, expiresAt: d.expiresAt!,
          bindName: options.namePrefix ? d.name : null, bindSerial: d.serial, broker,
          agent: buildAgentConfig({
            url: settings.deviceUrl, pin: devicePin, token: secrets.get(d.index)!, name: d.name, serial: d.serial,
            services: settings.services, stateDir: settings.stateDir, template: settings.template,
          }),
        };
        await writeFileAtomic(join(outDir, d.bundle), renderBundle(bundle), { mode: 0o600 });
        await deps.faults?.afterBundle?.(d.index);
        d.state = 'written';
      }
      secrets.clear();
    }
    manifest.status = manifest.devices.every((d) => d.state === 'written') ? 'complete' : 'incomplete';
    manifest.updatedAt = stamp();
    await writeManifest(outDir, manifest);

    const expiries = manifest.devices.flatMap((d) => (d.expiresAt ? [d.expiresAt] : [])).sort();
    const paths = manifestPaths(outDir);
    return {
      batch: options.batch, outDir, manifest: paths.json, csv: paths.csv, devices: manifest.devices.length,
      mintedNow: missing.length, alreadyWritten, recovered, discardedNow, foreign: [...manifest.foreign], bundlesMissing,
      bundles: [...new Set([manifest.devices[0]!.bundle, manifest.devices.at(-1)!.bundle])], earliestExpiry: expiries[0] ?? null,
    };
  } finally {
    await unlock();
  }
}
