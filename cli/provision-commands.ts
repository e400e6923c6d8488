/**
 * `certunnel provision batch|flash|verify`: factory tooling. batch talks to
 * the broker with a provisioner (or admin) key; flash works offline on a
 * mounted image root; verify checks an image, online by default. Nothing
 * here prints a token secret: they go only into the 0600 bundles.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { apiRequest } from '../api/index.js';
import {
  flashImage, parseServiceFlags, readBundle, readSerialsFile, runBatch, verifyImage, ProvisionError,
  type BatchReport, type FlashReport, type VerifyReport,
} from '../provisioning/index.js';
import { addApiOptions, resolveApi, type ApiFlags } from './api-connection.js';
import { notice, printJson } from './output.js';

interface BatchFlags extends ApiFlags {
  count?: string;
  batch: string;
  bindSerials?: string;
  namePrefix?: string;
  ttl?: string;
  service: string[];
  template?: string;
  deviceUrl?: string;
  devicePin?: string;
  stateDir?: string;
  out: string;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

async function readTemplate(path: string | undefined): Promise<Record<string, unknown>> {
  if (!path) return {};
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new ProvisionError('BAD_ARGUMENT', `--template ${path}: ${(err as NodeJS.ErrnoException).code ?? 'not valid JSON'}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ProvisionError('BAD_ARGUMENT', `--template ${path} must hold a JSON object`);
  return value as Record<string, unknown>;
}

function printBatch(r: BatchReport): void {
  const out = process.stdout;
  const done = r.mintedNow + r.alreadyWritten === r.devices;
  out.write(`batch ${r.batch}: ${r.devices} device(s) in ${r.outDir}${done ? ', complete' : ''}\n`);
  out.write(`  minted now       ${r.mintedNow}${r.mintedNow ? ' (one request)' : ''}\n`);
  out.write(`  already written  ${r.alreadyWritten}${r.recovered ? ` (${r.recovered} recovered from an interrupted run)` : ''}\n`);
  out.write(`  bundles          ${r.bundles.map((b) => join(r.outDir, b)).join(' … ')} (0600: each holds its device's token)\n`);
  out.write(`  manifest         ${r.manifest}, ${r.csv} (0600, no secrets)\n`);
  if (r.earliestExpiry) out.write(`  tokens expire    ${r.earliestExpiry}\n`);
  const err = process.stderr;
  for (const d of r.discardedNow) {
    err.write(`certunnel: warning: token ${d.tokenId}${d.index ? ` (device ${d.index})` : ''} lost its secret in an interrupted run (${d.reason}): now ${d.status}; a new one was minted\n`);
  }
  if (r.foreign.length) err.write(`certunnel: warning: ${r.foreign.length} token(s) of batch ${r.batch} were not minted here; left alone: ${r.foreign.join(', ')}\n`);
  if (r.bundlesMissing.length) err.write(`certunnel: note: the bundles of device(s) ${r.bundlesMissing.join(', ')} are no longer in bundles/ (flashed and removed?); their tokens were left alone\n`);
}

function printFlash(r: FlashReport): void {
  process.stdout.write(`flashed ${r.batch} #${r.index} (token ${r.tokenId}, expires ${r.expiresAt}) into ${r.root}\n`);
  const width = Math.max(...r.files.filter((f) => f.mode !== 'link').map((f) => f.path.length));
  for (const f of r.files) {
    const line = f.mode === 'link' ? `${f.path} ${f.note ?? ''}` : `${f.path.padEnd(width)}  ${f.mode} ${f.owner}${f.note ? `  ${f.note}` : ''}`;
    process.stdout.write(`  ${line.trimEnd()}\n`);
  }
  for (const w of r.warnings) notice(`warning: ${w}`);
}

function printVerify(r: VerifyReport): void {
  const width = Math.max(...r.checks.map((c) => c.name.length));
  for (const c of r.checks) process.stdout.write(`${c.status.toUpperCase().padEnd(4)}  ${c.name.padEnd(width)}  ${c.detail}\n`);
  process.stdout.write(r.ok ? `image ${r.root} is ready to ship\n` : `image ${r.root} FAILED verification\n`);
}

export function registerProvisionCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const provision = program.command('provision').description('factory provisioning: token batches, device bundles, image roots');

  addApiOptions(provision.command('batch').description('mint a batch of tokens in one request; write one config bundle per device and a manifest'))
    .option('--count <n>', 'devices in the batch (a re-run mints only the missing ones)')
    .requiredOption('--batch <name>', 'batch name (owned by --out: re-run with the same directory)')
    .option('--bind-serials <file>', 'bind token i to the i-th hardware serial in FILE (one per line)')
    .option('--name-prefix <prefix>', 'bind device names PREFIX-0001, PREFIX-0002, …')
    .option('--ttl <seconds>', 'token lifetime (default: the broker default, 30 days)')
    .option('--service <name=host:port>', 'a device service for the agent (repeatable): ssh=127.0.0.1:22, http=127.0.0.1:8080, mqtt@2=127.0.0.1:1883, http=off', collect, [])
    .option('--template <file>', 'extra agent settings (JSON: transport, keepalive, …)')
    .option('--device-url <url>', 'the broker URL devices use (default: the API URL used here)')
    .option('--device-pin <sha256//…>', "the TLS pin devices use (default: the broker's pin)")
    .option('--state-dir <dir>', 'the agent state directory on the device', '/var/lib/certunnel')
    .requiredOption('--out <dir>', 'output directory (bundles/, manifest.json, manifest.csv)')
    .action(async (flags: BatchFlags) => {
      const api = await resolveApi(flags, env);
      const count = flags.count === undefined ? undefined : Number(flags.count);
      const report = await runBatch(
        {
          outDir: flags.out, batch: flags.batch, count,
          serials: flags.bindSerials ? await readSerialsFile(flags.bindSerials) : undefined,
          namePrefix: flags.namePrefix, ttlSeconds: flags.ttl === undefined ? undefined : Number(flags.ttl),
          deviceUrl: flags.deviceUrl ?? api.baseUrl, devicePin: flags.devicePin,
          services: parseServiceFlags(flags.service), template: await readTemplate(flags.template), stateDir: flags.stateDir,
        },
        { api: (method, path, body) => apiRequest(api, method, path, body), apiUrl: api.baseUrl, connectionPin: api.pin ?? null },
      );
      if (flags.json) printJson(report);
      else printBatch(report);
    });

  provision.command('flash').description("write a device bundle into an image's root filesystem: agent config, state dir, systemd unit enabled")
    .requiredOption('--bundle <file>', 'a bundle from `provision batch`')
    .requiredOption('--root <dir>', "the image's root filesystem, mounted")
    .option('--unit <file>', 'the unit to install if the image has none (default: scripts/systemd/certunnel-agent.service)')
    .option('--serial <serial>', "this board's hardware serial: refuse a bundle bound to another")
    .option('--force', "replace another bundle's config (never an enrolled device's state)")
    .option('--json', 'print JSON')
    .action(async (flags: { bundle: string; root: string; unit?: string; serial?: string; force?: boolean; json?: boolean }) => {
      const bundle = await readBundle(flags.bundle);
      const report = await flashImage({ root: flags.root, bundle, unitSource: flags.unit, expectSerial: flags.serial, force: flags.force });
      if (flags.json) printJson(report);
      else printFlash(report);
    });

  provision.command('verify').description('check a flashed image: files, owners, modes, token expiry, the pinned broker')
    .requiredOption('--root <dir>', "the image's root filesystem, mounted")
    .option('--api <url>', 'reach the broker here instead of the flashed URL (the flashed pin still applies)')
    .option('--offline', 'do not contact the broker')
    .option('--json', 'print JSON')
    .action(async (flags: { root: string; api?: string; offline?: boolean; json?: boolean }) => {
      const report = await verifyImage({ root: flags.root, apiUrl: flags.api, online: !flags.offline, apiKey: env.CERTUNNEL_API_KEY || undefined });
      if (flags.json) printJson(report);
      else printVerify(report);
      if (!report.ok) process.exitCode = 1;
    });
}
