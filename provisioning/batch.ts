/**
 * `provision batch`: mint a batch of enrollment tokens in one request and
 * write one config bundle per device, plus the manifest. The steps, each in
 * its own file: plan (batch-plan.ts), reconcile with the broker and the disk
 * (batch-reconcile.ts), mint and write the bundles (batch-mint.ts).
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
 * list of the batch, revoking the tokens whose secrets an interrupted run
 * lost, then mints only the missing devices.
 */
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { mintMissing, writeBundles } from './batch-mint.js';
import { describeTarget, openManifest, planSlots, type BatchDeps, type BatchOptions } from './batch-plan.js';
import { reconcile, type Reconciled } from './batch-reconcile.js';
import { ProvisionError } from './errors.js';
import { manifestPaths, writeManifest, type DiscardedToken, type Manifest } from './manifest.js';

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

function reportOf(outDir: string, manifest: Manifest, reconciled: Reconciled, counts: { mintedNow: number; alreadyWritten: number }): BatchReport {
  const expiries = manifest.devices.flatMap((d) => (d.expiresAt ? [d.expiresAt] : [])).sort();
  const paths = manifestPaths(outDir);
  return {
    batch: manifest.batch, outDir, manifest: paths.json, csv: paths.csv, devices: manifest.devices.length,
    mintedNow: counts.mintedNow, alreadyWritten: counts.alreadyWritten, recovered: reconciled.recovered, discardedNow: reconciled.discardedNow,
    foreign: [...manifest.foreign], bundlesMissing: reconciled.bundlesMissing,
    bundles: [...new Set([manifest.devices[0]!.bundle, manifest.devices.at(-1)!.bundle])], earliestExpiry: expiries[0] ?? null,
  };
}

export async function runBatch(options: BatchOptions, deps: BatchDeps): Promise<BatchReport> {
  const now = deps.now ?? (() => new Date());
  const stamp = (): string => now().toISOString();
  const slots = planSlots(options);
  const { outDir } = options;
  await mkdir(join(outDir, 'bundles'), { recursive: true, mode: 0o700 });
  const unlock = await lockOutDir(outDir);
  try {
    const target = await describeTarget(options, deps, slots);
    const manifest = await openManifest(options, deps, slots, target, stamp);
    const reconciled = await reconcile(deps.api, manifest, outDir, stamp);

    const missing = manifest.devices.filter((d) => d.state === 'pending');
    const alreadyWritten = manifest.devices.length - missing.length;
    if (missing.length > 0) {
      const secrets = await mintMissing(deps.api, manifest, options, missing, stamp);
      await deps.faults?.afterMint?.();
      await writeBundles(options, target, missing, secrets, deps.faults);
      secrets.clear();
    }
    manifest.status = manifest.devices.every((d) => d.state === 'written') ? 'complete' : 'incomplete';
    manifest.updatedAt = stamp();
    await writeManifest(outDir, manifest);
    return reportOf(outDir, manifest, reconciled, { mintedNow: missing.length, alreadyWritten });
  } finally {
    await unlock();
  }
}
