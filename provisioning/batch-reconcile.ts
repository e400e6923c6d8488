/**
 * Before minting, a batch run reconciles its manifest with the broker's own
 * list of the batch (GET /v1/tokens?batch=) and with the disk:
 *
 * - a "minted" device whose bundle is on disk with its token id is
 *   recovered ("written");
 * - one whose bundle is not has lost its secret: its token is revoked and
 *   recorded in `discarded`, and the device is pending again;
 * - tokens of the batch that the manifest does not know come, while
 *   pendingMint is set, from a request whose answer was lost: revoked too;
 *   otherwise another tool minted them: listed in `foreign`, left alone.
 *
 * Afterwards the manifest again lists every token of the batch, and is
 * written with pendingMint cleared.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ListTokensResponse, RevokeTokensRequest, RevokeTokensResponse, TokenView } from '../api/index.js';
import { parseBundle, type DeviceBundle } from './bundle.js';
import type { BrokerCall } from './batch-plan.js';
import { writeManifest, type DiscardedToken, type Manifest, type ManifestDevice, type ManifestTokenStatus } from './manifest.js';

export interface Reconciled {
  /** Minted in an interrupted run and found intact on disk. */
  readonly recovered: number;
  /** Written earlier, file gone since (flashed and shredded?): left alone. */
  readonly bundlesMissing: number[];
  /** Revoked in this run because their secrets were lost. */
  readonly discardedNow: DiscardedToken[];
}

type Discard = Pick<DiscardedToken, 'tokenId' | 'index' | 'reason'>;

async function listBatchTokens(api: BrokerCall, batch: string): Promise<TokenView[]> {
  const out: TokenView[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ batch, limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const page: ListTokensResponse = await api('GET', `/v1/tokens?${q.toString()}`);
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

/** Checks each device that has a token against the disk and records the broker's status of its token. */
async function checkDevices(manifest: Manifest, listed: ReadonlyMap<string, TokenView>, outDir: string): Promise<{ recovered: number; bundlesMissing: number[]; lost: Discard[] }> {
  let recovered = 0;
  const bundlesMissing: number[] = [];
  const lost: Discard[] = [];
  for (const d of manifest.devices) {
    if (d.state === 'pending' || !d.tokenId) continue;
    const onDisk = await bundleOnDisk(join(outDir, d.bundle), d, manifest.batch);
    if (d.state === 'minted') {
      if (onDisk) {
        d.state = 'written';
        recovered++;
      } else {
        lost.push({ tokenId: d.tokenId, index: d.index, reason: 'secret-lost' });
        Object.assign(d, { state: 'pending', tokenId: null, expiresAt: null, tokenStatus: null });
        continue;
      }
    } else if (!onDisk) {
      bundlesMissing.push(d.index);
    }
    d.tokenStatus = listed.get(d.tokenId)?.status ?? 'unknown';
  }
  return { recovered, bundlesMissing, lost };
}

/** Tokens of the batch the manifest does not know: lost answers to discard, or foreign ones recorded as such. */
function triageUnknownTokens(manifest: Manifest, listed: ReadonlyMap<string, TokenView>, lost: readonly Discard[]): Discard[] {
  const known = new Set<string>([...manifest.devices.flatMap((d) => (d.tokenId ? [d.tokenId] : [])), ...manifest.discarded.map((d) => d.tokenId), ...lost.map((d) => d.tokenId)]);
  const unknown = [...listed.keys()].filter((id) => !known.has(id) && !manifest.foreign.includes(id));
  if (manifest.pendingMint) return unknown.map((id) => ({ tokenId: id, index: null, reason: 'response-lost' }));
  manifest.foreign.push(...unknown);
  return [];
}

/** Revokes the tokens still active among TO_DISCARD; returns them as the manifest records them. */
async function discardTokens(api: BrokerCall, toDiscard: readonly Discard[], listed: ReadonlyMap<string, TokenView>, stamp: () => string): Promise<DiscardedToken[]> {
  const discarded: DiscardedToken[] = [];
  for (const d of toDiscard) {
    let status: ManifestTokenStatus = listed.get(d.tokenId)?.status ?? 'unknown';
    if (status === 'active') {
      const body: RevokeTokensRequest = { id: d.tokenId };
      const res = await api<RevokeTokensResponse>('POST', '/v1/tokens/revoke', body);
      if (res.revoked === 1) status = 'revoked';
    }
    discarded.push({ ...d, status, at: stamp() });
  }
  return discarded;
}

export async function reconcile(api: BrokerCall, manifest: Manifest, outDir: string, stamp: () => string): Promise<Reconciled> {
  const listed = new Map((await listBatchTokens(api, manifest.batch)).map((t) => [t.id, t]));
  const { recovered, bundlesMissing, lost } = await checkDevices(manifest, listed, outDir);
  const discardedNow = await discardTokens(api, [...lost, ...triageUnknownTokens(manifest, listed, lost)], listed, stamp);
  manifest.discarded.push(...discardedNow);
  manifest.pendingMint = null;
  manifest.updatedAt = stamp();
  await writeManifest(outDir, manifest);
  return { recovered, bundlesMissing, discardedNow };
}
