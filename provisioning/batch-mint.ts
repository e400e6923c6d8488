/**
 * The two steps of a batch run that create secrets: one mint request for
 * every pending device (the broker mints in one transaction), recorded in
 * the manifest under pendingMint (see batch.ts for the order of writes), and
 * the bundles, the only place the secrets are written.
 */
import { join } from 'node:path';
import { ApiError, type MintTokensRequest, type MintTokensResponse } from '../api/index.js';
import { writeFileAtomic } from '../ca/index.js';
import { BUNDLE_FORMAT, buildAgentConfig, renderBundle, type DeviceBundle } from './bundle.js';
import type { BatchDeps, BatchOptions, BatchTarget, BrokerCall } from './batch-plan.js';
import { ProvisionError } from './errors.js';
import { writeManifest, type Manifest, type ManifestDevice } from './manifest.js';

/** POST /v1/tokens for MISSING; a refusal clears pendingMint (nothing was minted), any other failure leaves it for the next run. */
async function requestTokens(api: BrokerCall, manifest: Manifest, options: BatchOptions, missing: readonly ManifestDevice[]): Promise<MintTokensResponse> {
  const body: MintTokensRequest = {
    count: missing.length, batch: options.batch, ttlSeconds: options.ttlSeconds,
    bindNames: options.namePrefix ? missing.map((d) => d.name!) : undefined,
    bindSerials: options.serials ? missing.map((d) => d.serial!) : undefined,
  };
  try {
    return await api<MintTokensResponse>('POST', '/v1/tokens', body);
  } catch (err) {
    // A refusal (4xx) minted nothing: the broker mints in one transaction. Anything else may have.
    if (err instanceof ApiError && err.status !== undefined && err.status < 500) {
      manifest.pendingMint = null;
      await writeManifest(options.outDir, manifest);
      throw new ProvisionError('MINT_FAILED', `the broker refused to mint: ${err.code}: ${err.message}`, 1, { cause: err });
    }
    const code = err instanceof ApiError ? err.code : 'ERROR';
    throw new ProvisionError('MINT_FAILED', `the mint request failed (${code}); tokens may exist without their secrets: re-run the same command to revoke them and finish`, 1, { cause: err });
  }
}

/**
 * Mints a token for each of MISSING in one request and records them in the
 * manifest ("minted"); returns the secrets by device index, which exist
 * nowhere else until the bundles are written.
 */
export async function mintMissing(api: BrokerCall, manifest: Manifest, options: BatchOptions, missing: readonly ManifestDevice[], stamp: () => string): Promise<Map<number, string>> {
  manifest.pendingMint = { count: missing.length, requestedAt: stamp() };
  await writeManifest(options.outDir, manifest);
  const res = await requestTokens(api, manifest, options, missing);
  const ok = res.tokens.length === missing.length && res.tokens.every((t, i) =>
    /^tok_[a-z2-7]+$/.test(t.id) && t.batch === options.batch && t.bindName === (options.namePrefix ? missing[i]!.name : null) && t.bindSerial === (options.serials ? missing[i]!.serial : null));
  if (!ok) throw new ProvisionError('MINT_FAILED', 'the broker answered the mint with other tokens than asked for; re-run to revoke them');
  const secrets = new Map<number, string>();
  for (const [i, t] of res.tokens.entries()) {
    const d = missing[i]!;
    Object.assign(d, { state: 'minted', tokenId: t.id, expiresAt: t.expiresAt, tokenStatus: 'active' });
    secrets.set(d.index, t.token);
  }
  manifest.pendingMint = null;
  manifest.updatedAt = stamp();
  await writeManifest(options.outDir, manifest);
  return secrets;
}

/** Writes the bundle of each of MINTED (0600, atomically) and marks it "written". */
export async function writeBundles(
  options: BatchOptions, target: BatchTarget, minted: readonly ManifestDevice[], secrets: ReadonlyMap<number, string>, faults: BatchDeps['faults'],
): Promise<void> {
  const { settings, broker } = target;
  for (const d of minted) {
    const bundle: DeviceBundle = {
      format: BUNDLE_FORMAT, batch: options.batch, index: d.index, tokenId: d.tokenId!, expiresAt: d.expiresAt!,
      bindName: options.namePrefix ? d.name : null, bindSerial: d.serial, broker,
      agent: buildAgentConfig({
        url: settings.deviceUrl, pin: settings.devicePin, token: secrets.get(d.index)!, name: d.name, serial: d.serial,
        services: settings.services, stateDir: settings.stateDir, template: settings.template,
      }),
    };
    await writeFileAtomic(join(options.outDir, d.bundle), renderBundle(bundle), { mode: 0o600 });
    await faults?.afterBundle?.(d.index);
    d.state = 'written';
  }
}
