/**
 * `certunnel ssh DEVICE [-- ssh args]`, `certunnel ssh-proxy DEVICE` and
 * `certunnel ssh-config`: operators reach a device's sshd through the broker.
 *
 * Each run asks the API for an operator certificate (minutes long, for that
 * device's block) for a key kept in the operator's certunnel directory
 * (made once, 0600), then runs the system `ssh` with the broker as the jump
 * host: a ProxyCommand `ssh -W 127.0.0.1:<port>` to the broker, which reads
 * no user configuration and checks the broker's host key strictly against a
 * known_hosts written from the API's answer (the pinned-TLS channel vouches
 * for it). The device's own host key is the operator's business: their
 * normal known_hosts, under the device name (HostKeyAlias).
 */
import { spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { generateKeyPair, saveKeyPair } from '../ca/index.js';
import { type ListDevicesResponse, type OperatorCertificateResponse, SLOT, slotPort, TUNNEL_HOST } from '../api/index.js';
import { addApiOptions, callApi, resolveApi, type ApiFlags } from './api-connection.js';
import { callDeviceApi } from './device-ref.js';
import { CliError, notice, printResult } from './output.js';

const OPERATOR_KEY_FILE = 'operator_ed25519';

/** $CERTUNNEL_HOME, else $XDG_CONFIG_HOME/certunnel, else ~/.config/certunnel. */
function operatorHome(env: NodeJS.ProcessEnv): string {
  if (env.CERTUNNEL_HOME) return env.CERTUNNEL_HOME;
  return join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config'), 'certunnel');
}

/** The operator's key, made on first use (private key 0600 in a 0700 directory). */
async function ensureOperatorKey(home: string): Promise<{ keyPath: string; publicKeyLine: string }> {
  const keyPath = join(home, OPERATOR_KEY_FILE);
  const exists = await access(keyPath).then(() => true, () => false);
  if (!exists) {
    await mkdir(home, { recursive: true, mode: 0o700 });
    await saveKeyPair(keyPath, generateKeyPair(), { comment: 'certunnel operator key' });
    notice(`made an operator key in ${keyPath}`);
  }
  const publicKeyLine = (await readFile(`${keyPath}.pub`, 'utf8')).trim();
  return { keyPath, publicKeyLine };
}

/** POSIX shell quoting; ssh runs a ProxyCommand with /bin/sh -c "exec …" after expanding %-tokens. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

function proxyCommandOf(words: readonly string[]): string {
  return words.map((w) => shellQuote(w).replace(/%/g, '%%')).join(' ');
}

interface HopFiles {
  readonly dir: string;
  readonly certPath: string;
  readonly knownHostsPath: string;
  readonly logPath: string;
}

function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** A scratch directory (0700) with the certificate and a known_hosts naming only the broker. */
async function writeHopFiles(grant: OperatorCertificateResponse): Promise<HopFiles> {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-ssh-'));
  const certPath = join(dir, 'operator-cert.pub');
  const knownHostsPath = join(dir, 'known_hosts');
  const name = knownHostsName(grant.ssh.host, grant.ssh.port);
  await writeFile(certPath, `${grant.certificate}\n`, { mode: 0o600 });
  await writeFile(knownHostsPath, `${name} ${grant.ssh.hostKey}\n@cert-authority ${name} ${grant.ssh.hostCertificateAuthority}\n`, { mode: 0o600 });
  return { dir, certPath, knownHostsPath, logPath: join(dir, 'broker-hop.log') };
}

/** The `ssh` arguments of the broker hop: `-W 127.0.0.1:PORT` with nothing taken from the user's configuration. */
function brokerHopArgs(grant: OperatorCertificateResponse, files: HopFiles, keyPath: string, port: number): string[] {
  return [
    '-F', '/dev/null',
    '-o', `UserKnownHostsFile=${files.knownHostsPath}`,
    '-o', 'GlobalKnownHostsFile=/dev/null',
    '-o', 'StrictHostKeyChecking=yes',
    '-o', 'UpdateHostKeys=no',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'IdentityAgent=none',
    '-o', `IdentityFile=${keyPath}`,
    '-o', `CertificateFile=${files.certPath}`,
    '-o', 'BatchMode=yes',
    '-o', 'ConnectTimeout=15',
    '-o', 'ServerAliveInterval=15',
    '-o', 'ServerAliveCountMax=4',
    '-p', String(grant.ssh.port),
    '-l', grant.ssh.username,
    '-W', `${TUNNEL_HOST}:${port}`,
    grant.ssh.host,
  ];
}

interface SshFlags extends ApiFlags {
  port?: string;
  ssh?: string;
}

function targetPort(grant: OperatorCertificateResponse, flag: string | undefined): number {
  if (flag === undefined) return sshSlotPort(grant);
  const port = Number(flag);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new CliError('BAD_ARGUMENT', '--port must be a port number');
  return port;
}

/** The device's ssh slot; every block has one (the first port). */
function sshSlotPort(grant: OperatorCertificateResponse): number {
  return slotPort(grant.device.ports, SLOT.ssh)!;
}

function deviceLabel(grant: OperatorCertificateResponse): string {
  return grant.device.name ?? grant.device.id;
}

/** Refuses before running ssh when the broker already said the port's tunnel is down. */
function checkForwarded(grant: OperatorCertificateResponse, port: number): void {
  const { ports, forwardedPorts } = grant.device;
  if (forwardedPorts === null || port < ports.first || port > ports.last || forwardedPorts.includes(port)) return;
  throw new CliError('TUNNEL_NOT_CONNECTED', `${deviceLabel(grant)} is online, but its tunnel does not forward port ${port}${port === sshSlotPort(grant) ? ' (its ssh slot)' : ''}`, 255);
}

function warnOnSkew(grant: OperatorCertificateResponse, now = Date.now()): void {
  const after = Date.parse(grant.validAfter);
  const before = Date.parse(grant.validBefore);
  if (after > now + 120_000 || before < now) {
    notice(`warning: the certificate is valid ${grant.validAfter} to ${grant.validBefore}, but this machine says ${new Date(now).toISOString()}: check the clocks`);
  }
}

/**
 * What went wrong on the broker hop, from its ssh's stderr: a CliError with
 * a clear message, or undefined when the hop was fine (the failure, if any,
 * is the device's sshd's, and ssh has said so itself).
 */
export function explainHopFailure(log: string, grant: OperatorCertificateResponse, port: number, now = new Date()): CliError | undefined {
  const device = deviceLabel(grant);
  const { first, last } = grant.device.ports;
  const expired = now.getTime() >= Date.parse(grant.validBefore);
  if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|host key .* not known|Certificate invalid/i.test(log)) {
    return new CliError('BROKER_HOST_KEY_MISMATCH', `the SSH server at ${grant.ssh.host}:${grant.ssh.port} is not the broker the API vouched for (its host key differs); not connecting`, 255);
  }
  if (/Permission denied/i.test(log)) {
    return new CliError(
      'CERTIFICATE_REFUSED',
      expired
        ? `the broker refused the operator certificate: it expired at ${grant.validBefore}`
        : `the broker refused the operator certificate (valid until ${grant.validBefore}): it has expired or been revoked by the broker's clock, or the device was revoked`,
      255,
    );
  }
  if (/open failed|stdio forwarding failed/i.test(log)) {
    if (port < first || port > last) {
      return new CliError('REACH_REFUSED', `the broker refused port ${port}: the certificate for ${device} reaches its block ${first}-${last} only`, 255);
    }
    return new CliError('REACH_REFUSED', `the broker refused port ${port} of ${device}: its tunnel does not forward it (offline, or the service is not tunnelled)`, 255);
  }
  if (/Connection refused|timed out|Could not resolve|No route to host|Network is unreachable/i.test(log)) {
    return new CliError('BROKER_UNREACHABLE', `cannot reach the broker's SSH server at ${grant.ssh.host}:${grant.ssh.port}: ${log.trim().split('\n').at(-1)}`, 255);
  }
  if (expired && log.trim() !== '') {
    return new CliError('CERTIFICATE_EXPIRED', `the broker ended the connection when the operator certificate expired at ${grant.validBefore}`, 255);
  }
  return undefined;
}

async function requestGrant(flags: ApiFlags, env: NodeJS.ProcessEnv, device: string, publicKey: string): Promise<OperatorCertificateResponse> {
  return callDeviceApi<OperatorCertificateResponse>(flags, env, 'POST', device, '/operator-certificate', { publicKey });
}

function run(command: string, args: readonly string[], stdio: 'inherit' | ['inherit', 'inherit', number]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio });
    // The terminal's ^C goes to ssh; this process waits for it to clean up.
    const ignore = (): void => undefined;
    process.on('SIGINT', ignore);
    child.once('error', (err: NodeJS.ErrnoException) => {
      process.off('SIGINT', ignore);
      reject(err.code === 'ENOENT' ? new CliError('SSH_NOT_FOUND', `cannot run ${command}: install the OpenSSH client or pass --ssh`) : err);
    });
    child.once('close', (code, signal) => {
      process.off('SIGINT', ignore);
      resolve(code ?? (signal ? 128 + 2 : 255));
    });
  });
}

async function sshToDevice(device: string, sshArgs: readonly string[], flags: SshFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const sshBin = flags.ssh ?? 'ssh';
  const { keyPath, publicKeyLine } = await ensureOperatorKey(operatorHome(env));
  const grant = await requestGrant(flags, env, device, publicKeyLine);
  const port = targetPort(grant, flags.port);
  checkForwarded(grant, port);
  warnOnSkew(grant);
  const files = await writeHopFiles(grant);
  try {
    const hop = `${proxyCommandOf([sshBin, ...brokerHopArgs(grant, files, keyPath, port)])} 2>${shellQuote(files.logPath)}`;
    const name = deviceLabel(grant);
    // Options after the destination are still options to OpenSSH; ours come first and win.
    const code = await run(sshBin, ['-o', `ProxyCommand=${hop}`, '-o', `HostKeyAlias=${name}`, name, ...sshArgs], 'inherit');
    if (code === 255) {
      const log = await readFile(files.logPath, 'utf8').catch(() => '');
      const explained = explainHopFailure(log, grant, port);
      if (explained) throw explained;
      if (log.trim()) process.stderr.write(log);
    }
    process.exitCode = code;
  } finally {
    await rm(files.dir, { recursive: true, force: true });
  }
}

async function sshProxy(device: string, flags: SshFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const sshBin = flags.ssh ?? 'ssh';
  const { keyPath, publicKeyLine } = await ensureOperatorKey(operatorHome(env));
  const grant = await requestGrant(flags, env, device, publicKeyLine);
  const port = targetPort(grant, flags.port);
  checkForwarded(grant, port);
  const files = await writeHopFiles(grant);
  try {
    process.exitCode = await run(sshBin, brokerHopArgs(grant, files, keyPath, port), 'inherit');
  } finally {
    await rm(files.dir, { recursive: true, force: true });
  }
}

/** How to run this very CLI again from a ProxyCommand, whatever the working directory. */
function selfCommand(): string[] {
  const execArgv = [...process.execArgv];
  for (let i = 0; i < execArgv.length - 1; i++) {
    // A bare --import specifier (tsx, in development) resolves from the working directory: make it absolute.
    if ((execArgv[i] === '--import' || execArgv[i] === '--loader') && !/^(\.|\/|file:)/.test(execArgv[i + 1]!)) execArgv[i + 1] = import.meta.resolve(execArgv[i + 1]!);
  }
  return [process.execPath, ...execArgv, process.argv[1]!];
}

async function sshConfig(flags: ApiFlags & { command?: string }, env: NodeJS.ProcessEnv): Promise<void> {
  const api = await resolveApi(flags, env);
  const names: string[] = [];
  let cursor: string | null = null;
  do {
    const q: string = `/v1/devices?status=active&limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const page: ListDevicesResponse = await callApi(flags, env, 'GET', q);
    for (const d of page.items) if (d.name) names.push(d.name);
    cursor = page.nextCursor;
  } while (cursor);
  const self = flags.command ?? selfCommand().map(shellQuote).join(' ');
  const apiArgs = ['--api', api.baseUrl, ...(api.pin ? ['--pin', api.pin] : [])].map(shellQuote).join(' ');
  const out: string[] = [
    `# certunnel: ssh_config for the devices behind ${api.baseUrl}, generated ${new Date().toISOString()} by \`certunnel ssh-config\`.`,
    '# Add it to ~/.ssh/config (or Include it): `ssh kiosk-42` then goes through the broker, with a fresh',
    '# operator certificate for each connection. Keep CERTUNNEL_API_KEY in your environment; run this again',
    '# after devices are enrolled. The devices\' own host keys are checked in your known_hosts under their names.',
  ];
  for (let i = 0; i < names.length; i += 16) {
    out.push(`Host ${names.slice(i, i + 16).join(' ')}`, `    ProxyCommand ${self} ssh-proxy ${apiArgs} %n`);
  }
  if (names.length === 0) out.push('# (no named active devices)');
  printResult(flags.json, { devices: names, config: `${out.join('\n')}\n` }, out.join('\n'));
}

export function registerSshCommands(program: Command, env: NodeJS.ProcessEnv): void {
  addApiOptions(
    program
      .command('ssh')
      .description("ssh to a device's sshd through the broker with a short-lived operator certificate (operator or admin key)")
      .argument('<device>', 'device name or id')
      .argument('[ssh-args...]', 'after --: options and command for ssh, e.g. -- -l pi uptime'),
  )
    .option('--port <port>', "the broker-side port to reach (default: the device's ssh slot, the first port of its block)")
    .option('--ssh <path>', 'the OpenSSH client to run', 'ssh')
    .action((device: string, sshArgs: string[], flags: SshFlags) => sshToDevice(device, sshArgs, flags, env));

  addApiOptions(
    program
      .command('ssh-proxy')
      .description('for ssh_config ProxyCommand: connect stdin/stdout to a device port through the broker (see ssh-config)')
      .argument('<device>', 'device name or id'),
  )
    .option('--port <port>', "the broker-side port to reach (default: the device's ssh slot)")
    .option('--ssh <path>', 'the OpenSSH client to run', 'ssh')
    .action((device: string, flags: SshFlags) => sshProxy(device, flags, env));

  addApiOptions(program.command('ssh-config').description('print an ssh_config snippet so that plain `ssh <device>` goes through the broker'))
    .option('--command <cmd>', 'how ssh should run certunnel (default: this very program)')
    .action((flags: ApiFlags & { command?: string }) => sshConfig(flags, env));
}
