/** `certunnel ca …`: the CA by hand, against key files in a directory. */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import {
  CaError,
  describeCertificate,
  fingerprint,
  formatCertificate,
  generateKeyPair,
  loadKeyPair,
  loadPublicKey,
  parseCertificateLine,
  parsePortPrincipal,
  saveKeyPair,
  signDeviceCert,
  verifyCertificate,
  writeKrl,
} from '../ca/index.js';
import { readPassphrase } from './passphrase.js';
import { CliError, printJson, printResult } from './output.js';

const USER_CA_FILE = 'user_ca';
const HOST_CA_FILE = 'host_ca';

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** Parses "1h", "30m", "90s", "2d" or plain seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(text.trim());
  if (!m) throw new CliError('BAD_ARGUMENT', `not a duration: ${text} (use e.g. 90s, 30m, 1h, 2d)`);
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

function parsePortRange(text: string): { first: number; last: number } {
  const parsed = parsePortPrincipal(`ports-${text}`);
  if (!parsed) throw new CliError('BAD_ARGUMENT', `not a port range: ${text} (use FIRST-LAST, e.g. 20000-20001)`);
  return parsed.block;
}

interface SignDeviceFlags {
  ca: string;
  key: string;
  deviceId: string;
  ports: string;
  serial: string;
  validity: string;
  passphraseFile?: string;
  out?: string;
  json?: boolean;
}

interface KrlFlags {
  ca: string;
  out: string;
  serial?: string[];
  serialRange?: string[];
  keyId?: string[];
  version: string;
  json?: boolean;
}

async function initCa(opts: { dir: string; passphraseFile?: string; json?: boolean }, env: NodeJS.ProcessEnv): Promise<void> {
  const passphrase = await readPassphrase(opts.passphraseFile, env);
  for (const name of [USER_CA_FILE, HOST_CA_FILE]) {
    if (await exists(join(opts.dir, name))) {
      throw new CliError('CA_EXISTS', `${join(opts.dir, name)} already exists; refusing to overwrite a CA`);
    }
  }
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const fingerprints: Record<string, string> = {};
  for (const name of [USER_CA_FILE, HOST_CA_FILE]) {
    const pair = generateKeyPair();
    await saveKeyPair(join(opts.dir, name), pair, { passphrase, comment: `certunnel ${name.replace('_', ' ')}` });
    fingerprints[name] = fingerprint(pair.publicKey);
  }
  printResult(opts.json, fingerprints, Object.entries(fingerprints).map(([name, fp]) => `${name}: ${fp}`).join('\n'));
}

async function signDevice(opts: SignDeviceFlags, env: NodeJS.ProcessEnv): Promise<void> {
  if (!/^\d+$/.test(opts.serial)) throw new CliError('BAD_ARGUMENT', 'serial must be a decimal number');
  const caKey = await loadKeyPair(opts.ca, { passphrase: await readPassphrase(opts.passphraseFile, env) });
  const cert = signDeviceCert({
    ca: caKey,
    publicKey: await loadPublicKey(opts.key),
    deviceId: opts.deviceId,
    ports: parsePortRange(opts.ports),
    serial: BigInt(opts.serial),
    now: new Date(),
    validitySeconds: parseDuration(opts.validity),
  });
  const line = `${formatCertificate(cert, `device:${opts.deviceId}`)}\n`;
  if (opts.out) await writeFile(opts.out, line, { mode: 0o644 });
  if (opts.json) printJson({ certificate: line.trim(), out: opts.out ?? null });
  else if (!opts.out) process.stdout.write(line);
}

/** The serials of --serial and --serial-range, as given (duplicates and all). */
function krlSerials(opts: KrlFlags): bigint[] {
  const serials: bigint[] = [];
  for (const text of opts.serial ?? []) {
    if (!/^\d+$/.test(text)) throw new CliError('BAD_ARGUMENT', `--serial: not a number: ${text}`);
    serials.push(BigInt(text));
  }
  for (const text of opts.serialRange ?? []) {
    const m = /^(\d+)-(\d+)$/.exec(text);
    if (!m || BigInt(m[1]!) > BigInt(m[2]!) || BigInt(m[2]!) - BigInt(m[1]!) > 1_000_000n) {
      throw new CliError('BAD_ARGUMENT', `--serial-range: use FIRST-LAST (at most a million serials): ${text}`);
    }
    for (let n = BigInt(m[1]!); n <= BigInt(m[2]!); n++) serials.push(n);
  }
  return serials;
}

async function krl(opts: KrlFlags): Promise<void> {
  const serials = krlSerials(opts);
  if (!/^\d+$/.test(opts.version)) throw new CliError('BAD_ARGUMENT', '--version must be a number');
  await writeKrl(opts.out, { caKey: await loadPublicKey(opts.ca), serials, keyIds: opts.keyId ?? [], version: BigInt(opts.version), generatedAt: new Date() });
  const counts = { out: opts.out, serials: new Set(serials).size, keyIds: (opts.keyId ?? []).length };
  printResult(opts.json, counts, `wrote ${opts.out}: ${counts.serials} serial(s), ${counts.keyIds} key id(s)`);
}

/** The verdict of verifying CERT against the CA in CAFILE; a refusal is a verdict (exit status 3), not an error. */
async function verification(cert: ReturnType<typeof parseCertificateLine>, caFile: string, type: string): Promise<{ ok: boolean; ca: string; code?: string; message?: string }> {
  if (type !== 'user' && type !== 'host') throw new CliError('BAD_ARGUMENT', '--type must be user or host');
  const caKey = await loadPublicKey(caFile);
  try {
    verifyCertificate(cert, { trustedCaKeys: [caKey], type, now: new Date() });
    return { ok: true, ca: fingerprint(caKey) };
  } catch (err) {
    if (!(err instanceof CaError)) throw err;
    return { ok: false, ca: fingerprint(caKey), code: err.code, message: err.message };
  }
}

async function inspect(certfile: string, opts: { ca?: string; type: string; json?: boolean }): Promise<void> {
  const cert = parseCertificateLine(await readFile(certfile, 'utf8'));
  const description = describeCertificate(cert, certfile);
  const verdict = opts.ca ? await verification(cert, opts.ca, opts.type) : undefined;
  if (verdict && !verdict.ok) process.exitCode = 3;
  const line = !verdict ? '' : verdict.ok ? `\n        Verification: OK (signed by ${verdict.ca})` : `\n        Verification: FAILED ${verdict.code}: ${verdict.message}`;
  printResult(opts.json, { description, verification: verdict ?? null }, `${description}${line}`);
}

export function registerCaCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const ca = program.command('ca').description('the SSH certificate authority by hand');

  ca.command('init')
    .description('create a user CA and a host CA (Ed25519) in a directory')
    .requiredOption('--dir <dir>', 'directory for the CA keys')
    .option('--passphrase-file <file>', 'encrypt the CA private keys with the passphrase in this file (or set CERTUNNEL_CA_PASSPHRASE)')
    .action((opts: { dir: string; passphraseFile?: string }) => initCa(opts, env));

  ca.command('sign-device')
    .description('sign a device certificate for a public key')
    .requiredOption('--ca <file>', 'user CA private key file')
    .requiredOption('--key <file>', "device's Ed25519 public key file")
    .requiredOption('--device-id <id>', 'device id (key id becomes device:<id>)')
    .requiredOption('--ports <first-last>', 'the device port block, e.g. 20000-20001')
    .requiredOption('--serial <n>', 'certificate serial (nonzero)')
    .option('--validity <duration>', 'validity, e.g. 1h', '1h')
    .option('--passphrase-file <file>', 'passphrase of the CA key (or set CERTUNNEL_CA_PASSPHRASE)')
    .option('--out <file>', 'write the certificate here instead of standard output')
    .action((opts: SignDeviceFlags) => signDevice(opts, env));

  ca.command('krl')
    .description('write an OpenSSH KRL (for sshd RevokedKeys) revoking certificates of a CA by serial or key id')
    .requiredOption('--ca <pubfile>', 'public key of the CA whose certificates are revoked')
    .requiredOption('--out <file>', 'KRL file to write (atomically, mode 0644)')
    .option('--serial <n...>', 'revoked serial(s)')
    .option('--serial-range <a-b...>', 'revoked serial range(s), inclusive')
    .option('--key-id <id...>', 'revoked key id(s), e.g. device:dev_…')
    .option('--version <n>', 'KRL version number', '1')
    .action((opts: KrlFlags) => krl(opts));

  ca.command('inspect')
    .description('print a certificate as ssh-keygen -L does, and check its signature against a CA')
    .argument('<certfile>', 'certificate file (…-cert.pub)')
    .option('--ca <pubfile>', 'CA public key to verify the signature against')
    .option('--type <type>', 'expected certificate type (user or host)', 'user')
    .action((certfile: string, opts: { ca?: string; type: string }) => inspect(certfile, opts));
}
