/**
 * The plan of a `provision batch` run, settled before anything is minted:
 * the options checked and laid out as one slot per device (index, name,
 * serial), what every bundle will say about the broker (from GET /v1/ca),
 * and the manifest opened: a new one for a new output directory, else the
 * one an earlier run left, which must be the same batch, broker and
 * settings.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type CaResponse, DEVICE_NAME, HARDWARE_SERIAL, type ListTokensResponse, TOKEN_BATCH } from '../api/index.js';
import { fingerprint, parsePublicKey } from '../ca/index.js';
import { DEFAULT_STATE_DIR, buildAgentConfig, type BrokerInfo } from './bundle.js';
import { ProvisionError } from './errors.js';
import { MANIFEST_FORMAT, readManifest, type BatchSettings, type Manifest } from './manifest.js';

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

/** Reads a serials file: one per line; blank lines and #comments skipped. */
export async function readSerialsFile(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new ProvisionError('BAD_ARGUMENT', `cannot read ${path}: ${err.code ?? String(err)}`);
  });
  const serials = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const seen = new Set<string>();
  for (const [i, s] of serials.entries()) {
    if (!HARDWARE_SERIAL.test(s)) throw new ProvisionError('BAD_ARGUMENT', `${path}: serial ${i + 1} must be 1-128 printable ASCII characters without spaces`);
    if (seen.has(s)) throw new ProvisionError('BAD_ARGUMENT', `${path}: serial ${s} appears twice`);
    seen.add(s);
  }
  if (serials.length === 0) throw new ProvisionError('BAD_ARGUMENT', `${path} lists no serials`);
  return serials;
}

/** One device of the batch, before it has a token. */
export interface Slot {
  readonly index: number;
  readonly name: string | null;
  readonly serial: string | null;
}

/** Device numbers in names and bundle file names: at least 4 digits, as many as the batch needs. */
function pad(index: number, count: number): string {
  return String(index).padStart(Math.max(4, String(count).length), '0');
}

/** Checks the options and lays out one slot per device. */
export function planSlots(options: BatchOptions): Slot[] {
  if (!TOKEN_BATCH.test(options.batch)) throw new ProvisionError('BAD_ARGUMENT', '--batch: 1-64 letters, digits, dot, underscore, hyphen');
  if (options.ttlSeconds !== undefined && (!Number.isInteger(options.ttlSeconds) || options.ttlSeconds < 60)) {
    throw new ProvisionError('BAD_ARGUMENT', '--ttl must be a whole number of seconds, at least 60');
  }
  const count = options.count ?? options.serials?.length;
  if (count === undefined || !Number.isInteger(count) || count < 1) throw new ProvisionError('BAD_ARGUMENT', 'give --count N (a positive integer) or --bind-serials FILE');
  if (options.serials && options.serials.length !== count) {
    throw new ProvisionError('BAD_ARGUMENT', `--count ${count} does not match the ${options.serials.length} serials given`);
  }
  return Array.from({ length: count }, (_, i) => {
    const name = options.namePrefix ? `${options.namePrefix}-${pad(i + 1, count)}` : null;
    if (name !== null && !DEVICE_NAME.test(name)) throw new ProvisionError('BAD_ARGUMENT', `device name ${name} is not a DNS label (--name-prefix)`);
    return { index: i + 1, name, serial: options.serials?.[i] ?? null };
  });
}

/** What every bundle of the batch says about the broker, and the manifest's record of it. */
export interface BatchTarget {
  readonly settings: BatchSettings;
  readonly broker: BrokerInfo;
  readonly userCaFingerprint: string;
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

/** Asks the broker for its keys (GET /v1/ca) and settles what the devices will be told. */
export async function describeTarget(options: BatchOptions, deps: BatchDeps, slots: readonly Slot[]): Promise<BatchTarget> {
  const ca = await deps.api<CaResponse>('GET', '/v1/ca');
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
  return { settings, broker, userCaFingerprint: fingerprint(parsePublicKey(ca.userCertificateAuthority)) };
}

const canonical = (v: unknown): string => JSON.stringify(v, (_k, value: unknown) =>
  value && typeof value === 'object' && !Array.isArray(value) ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b))) : value);

/** An earlier run's manifest, if this run may go on with it; slots never minted beyond the new count are dropped. */
function resumeManifest(manifest: Manifest, options: BatchOptions, slots: readonly Slot[], target: BatchTarget): Manifest {
  const { outDir } = options;
  if (manifest.batch !== options.batch) throw new ProvisionError('MANIFEST_MISMATCH', `${outDir} holds batch ${manifest.batch}, not ${options.batch}`);
  if (manifest.broker.userCaFingerprint !== target.userCaFingerprint) {
    throw new ProvisionError('BROKER_MISMATCH', `${outDir} was minted by another broker (user CA ${manifest.broker.userCaFingerprint}, this one ${target.userCaFingerprint})`);
  }
  if (canonical(manifest.settings) !== canonical(target.settings)) {
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
  return manifest;
}

/** A manifest for a new output directory, which owns its batch name from now on. */
async function newManifest(options: BatchOptions, deps: BatchDeps, target: BatchTarget, stamp: () => string): Promise<Manifest> {
  // The batch must not exist on the broker yet, or a later reconciliation could not tell its tokens from someone else's.
  const existing = await deps.api<ListTokensResponse>('GET', `/v1/tokens?${new URLSearchParams({ batch: options.batch, limit: '1' }).toString()}`);
  if (existing.items.length > 0) {
    throw new ProvisionError('BATCH_NOT_EMPTY', `the broker already has tokens in batch ${options.batch}; choose a new batch name (or re-run with the output directory that minted it)`);
  }
  return {
    format: MANIFEST_FORMAT, batch: options.batch, status: 'incomplete',
    broker: { apiUrl: deps.apiUrl, userCaFingerprint: target.userCaFingerprint }, settings: target.settings,
    createdAt: stamp(), updatedAt: stamp(), pendingMint: null, devices: [], discarded: [], foreign: [],
  };
}

/** The manifest this run works on (not written yet), with a pending device for every slot it did not list. */
export async function openManifest(options: BatchOptions, deps: BatchDeps, slots: readonly Slot[], target: BatchTarget, stamp: () => string): Promise<Manifest> {
  const earlier = await readManifest(options.outDir);
  const manifest = earlier ? resumeManifest(earlier, options, slots, target) : await newManifest(options, deps, target, stamp);
  for (const s of slots.slice(manifest.devices.length)) {
    manifest.devices.push({
      index: s.index, name: s.name, serial: s.serial, bundle: join('bundles', `${options.batch}-${pad(s.index, slots.length)}.json`),
      state: 'pending', tokenId: null, expiresAt: null, tokenStatus: null,
    });
  }
  return manifest;
}
