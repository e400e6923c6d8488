/**
 * The batch manifest: what an output directory minted, written atomically
 * (0600) as manifest.json, the record a re-run reads, and manifest.csv,
 * derived from it for people and spreadsheets. It holds token ids,
 * bindings, expiry, bundle paths and states — never a token secret.
 *
 * Device states: "pending" (no token yet), "minted" (the broker answered
 * with a token; its bundle may not be on disk yet), "written" (the bundle
 * is on disk). `pendingMint` is set just before a mint request and cleared
 * in the same write that records its answer: while it is set, tokens of the
 * batch that the manifest does not list may exist (the answer was lost).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { TOKEN_STATUSES } from '../api/index.js';
import { writeFileAtomic } from '../ca/index.js';
import { ProvisionError } from './errors.js';

export const MANIFEST_FORMAT = 'certunnel-batch-manifest/1';
const MANIFEST_JSON = 'manifest.json';
const MANIFEST_CSV = 'manifest.csv';

/** The broker's token status (api TokenStatus), or unknown when its list no longer has the token. */
const tokenStatus = z.enum([...TOKEN_STATUSES, 'unknown']);

const deviceSchema = z.strictObject({
  index: z.number().int().min(1),
  name: z.string().nullable(),
  serial: z.string().nullable(),
  /** Relative to the output directory. */
  bundle: z.string().min(1),
  state: z.enum(['pending', 'minted', 'written']),
  tokenId: z.string().nullable(),
  expiresAt: z.string().nullable(),
  /** The broker's view at the last run. */
  tokenStatus: tokenStatus.nullable(),
});

const discardedSchema = z.strictObject({
  tokenId: z.string(),
  /** The device slot it was minted for, when known. */
  index: z.number().int().nullable(),
  /** secret-lost: minted and recorded, but its bundle was never written; response-lost: minted by a request whose answer never arrived. */
  reason: z.enum(['secret-lost', 'response-lost']),
  /** The broker's status after the revocation (revoked, or used/expired if it was already). */
  status: tokenStatus,
  at: z.string(),
});

const settingsSchema = z.strictObject({
  deviceUrl: z.string(),
  devicePin: z.string().nullable(),
  namePrefix: z.string().nullable(),
  ttlSeconds: z.number().int().nullable(),
  stateDir: z.string(),
  services: z.record(z.string(), z.unknown()),
  template: z.record(z.string(), z.unknown()),
});

const manifestSchema = z.strictObject({
  format: z.literal(MANIFEST_FORMAT),
  batch: z.string(),
  status: z.enum(['incomplete', 'complete']),
  broker: z.strictObject({ apiUrl: z.string(), userCaFingerprint: z.string() }),
  settings: settingsSchema,
  createdAt: z.string(),
  updatedAt: z.string(),
  pendingMint: z.strictObject({ count: z.number().int().min(1), requestedAt: z.string() }).nullable(),
  devices: z.array(deviceSchema),
  discarded: z.array(discardedSchema),
  /** Tokens of the batch this directory did not mint (another tool or station): listed, left alone. */
  foreign: z.array(z.string()),
});

export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestDevice = z.infer<typeof deviceSchema>;
export type DiscardedToken = z.infer<typeof discardedSchema>;
export type BatchSettings = z.infer<typeof settingsSchema>;
export type ManifestTokenStatus = z.infer<typeof tokenStatus>;

export function manifestPaths(outDir: string): { json: string; csv: string } {
  return { json: join(outDir, MANIFEST_JSON), csv: join(outDir, MANIFEST_CSV) };
}

export async function readManifest(outDir: string): Promise<Manifest | null> {
  const path = manifestPaths(outDir).json;
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProvisionError('MANIFEST_INVALID', `${path} is not valid JSON`);
  }
  const result = manifestSchema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ProvisionError('MANIFEST_INVALID', `${path}: field ${issue.path.join('.') || '(top level)'}: ${issue.message}`);
  }
  return result.data;
}

function csvField(value: string | number | null): string {
  const text = value === null ? '' : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export const CSV_COLUMNS = ['index', 'name', 'serial', 'token_id', 'expires_at', 'state', 'token_status', 'bundle'] as const;

/** One row per device slot, then one per discarded token (state "discarded:<reason>"). */
function renderManifestCsv(m: Manifest): string {
  const rows: Array<Array<string | number | null>> = [[...CSV_COLUMNS]];
  for (const d of m.devices) rows.push([d.index, d.name, d.serial, d.tokenId, d.expiresAt, d.state, d.tokenStatus, d.bundle]);
  for (const d of m.discarded) rows.push([d.index, null, null, d.tokenId, null, `discarded:${d.reason}`, d.status, null]);
  return rows.map((r) => r.map(csvField).join(',')).join('\n') + '\n';
}

/** JSON first (the record), then the CSV derived from it; each replaced atomically, 0600. */
export async function writeManifest(outDir: string, m: Manifest): Promise<void> {
  const paths = manifestPaths(outDir);
  await writeFileAtomic(paths.json, `${JSON.stringify(m, null, 2)}\n`, { mode: 0o600 });
  await writeFileAtomic(paths.csv, renderManifestCsv(m), { mode: 0o600 });
}
