/**
 * `certunnel agent enroll|run|status`: the device agent. The configuration
 * (agent/config.ts) is loaded here, once, from --config and the flags; the
 * enrollment token may also come from CERTUNNEL_ENROLL_TOKEN or a file, so
 * that it does not show in `ps`.
 *
 * Exit statuses (agent/errors.ts EXIT): 0 done / stopped, 1 error, 3 usage
 * or invalid config, 4 not enrolled, 10 revoked, 11 refused for good by the
 * broker (bad or used token, re-enrollment needed).
 */
import { readFile } from 'node:fs/promises';
import { Command, CommanderError } from 'commander';
import { pino, type Logger } from 'pino';
import { Agent } from '../agent/agent.js';
import { loadAgentConfig, type AgentConfig } from '../agent/config.js';
import { enrollDevice } from '../agent/enroll.js';
import { AgentError, EXIT } from '../agent/errors.js';
import { acquireRunLock, ensureStateDir, formatSshAddress, sshEndpointsOf } from '../agent/state-dir.js';
import { formatAgentStatus, readAgentStatus } from '../agent/status.js';
import type { Transport } from '../agent/transport.js';
import { createOpensshTransport } from '../agent/transport-openssh.js';
import { printJson } from './output.js';

interface CommonFlags {
  config?: string;
  stateDir?: string;
}

interface EnrollFlags extends CommonFlags {
  url?: string;
  pin?: string;
  token?: string;
  tokenFile?: string;
  name?: string;
  hardwareSerial?: string;
  insecureHttp?: boolean;
  force?: boolean;
  json?: boolean;
}

interface RunFlags extends CommonFlags {
  tokenFile?: string;
  transport?: string;
  logLevel?: string;
}

/** Field paths whose values never reach a log line (the first defence is never logging them). */
const REDACT = ['token', '*.token', 'privateKey', '*.privateKey', 'key', '*.key', 'certificate', '*.certificate', 'signature', '*.signature'];

function createAgentLogger(level: string, destination = pino.destination({ fd: 1, sync: true })): Logger {
  // A log line that cannot be written (stdout closed, journald restarting) must never take the agent down.
  destination.on('error', () => undefined);
  return pino(
    {
      level,
      base: { service: 'certunnel-agent' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/**
 * The token in FILE; an empty file is no token (undefined), so that the
 * config's or none applies: the systemd unit passes its credential
 * (SetCredential= default: empty once the factory token file is gone), and
 * an enrolled agent must just run, an unenrolled one exit NOT_ENROLLED.
 */
async function readTokenFile(file: string): Promise<string | undefined> {
  const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new AgentError('BAD_ARGUMENT', `cannot read ${file}: ${err.code ?? String(err)}`, EXIT.USAGE);
  });
  return text.trim() || undefined;
}

async function readToken(flags: EnrollFlags, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (flags.token && flags.tokenFile) throw new AgentError('BAD_ARGUMENT', 'give --token or --token-file, not both', EXIT.USAGE);
  if (flags.tokenFile) return readTokenFile(flags.tokenFile);
  return flags.token ?? (env.CERTUNNEL_ENROLL_TOKEN || undefined);
}

async function enrollConfig(flags: EnrollFlags, env: NodeJS.ProcessEnv): Promise<AgentConfig> {
  const token = await readToken(flags, env);
  return loadAgentConfig({
    file: flags.config,
    overrides: {
      broker: flags.url || flags.pin || flags.insecureHttp ? { url: flags.url, pin: flags.pin, insecureHttp: flags.insecureHttp ? true : undefined } : undefined,
      stateDir: flags.stateDir,
      enroll: { token, name: flags.name, hardwareSerial: flags.hardwareSerial },
    },
  });
}

async function enroll(flags: EnrollFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const config = await enrollConfig(flags, env);
  if (!config.broker?.url) throw new AgentError('BAD_ARGUMENT', 'the broker URL is missing: --url or broker.url in --config', EXIT.USAGE);
  if (!config.enroll.token) throw new AgentError('BAD_ARGUMENT', 'the enrollment token is missing: --token-file, --token, CERTUNNEL_ENROLL_TOKEN or enroll.token in --config', EXIT.USAGE);
  const enrollment = await enrollDevice({
    stateDir: config.stateDir,
    broker: { url: config.broker.url, pin: config.broker.pin },
    token: config.enroll.token,
    name: config.enroll.name,
    hardwareSerial: config.enroll.hardwareSerial,
    force: flags.force,
    timeoutMs: config.apiTimeoutSeconds * 1000,
    // stdout is the answer (--json); warnings such as a refused trust set go to stderr.
    log: createAgentLogger('warn', pino.destination({ fd: 2, sync: true })),
  });
  const s = enrollment.state;
  if (flags.json) {
    printJson({ deviceId: s.deviceId, name: s.name, ports: s.ports, serial: s.serial, validBefore: s.validBefore, ssh: { host: s.ssh.host, port: s.ssh.port },
      sshEndpoints: sshEndpointsOf(s), stateDir: config.stateDir });
    return;
  }
  process.stdout.write(
    `enrolled ${s.deviceId}${s.name ? ` (${s.name})` : ''}: ports ${s.ports.first}-${s.ports.last}, ` +
      `ssh ${sshEndpointsOf(s).map(formatSshAddress).join(' ')}, certificate valid until ${s.validBefore}\nstate in ${config.stateDir}\n`,
  );
}

async function createTransport(config: AgentConfig): Promise<Transport> {
  if (config.transport === 'openssh') return createOpensshTransport({ command: config.ssh.command });
  // Loaded on demand: the ssh2 shim refuses to load with an ssh2 release it was not written for,
  // and that must not take the other commands (or the openssh transport) down with it.
  const { createSsh2Transport } = await import('../agent/transport-ssh2.js');
  return createSsh2Transport();
}

async function run(flags: RunFlags): Promise<void> {
  const token = flags.tokenFile ? await readTokenFile(flags.tokenFile) : undefined;
  const config = await loadAgentConfig({
    file: flags.config,
    overrides: {
      stateDir: flags.stateDir, transport: flags.transport, log: flags.logLevel ? { level: flags.logLevel } : undefined,
      enroll: token ? { token } : undefined,
    },
  });
  const logger = createAgentLogger(config.log.level);
  const paths = await ensureStateDir(config.stateDir);
  const release = await acquireRunLock(paths);
  let status: number = EXIT.ERROR;
  try {
    const transport = await createTransport(config);
    const agent = new Agent({ config, transport, logger });
    const stop = (signal: string): void => {
      logger.info({ event: 'signal', signal }, 'stopping');
      agent.stop();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    logger.info({ event: 'start', stateDir: config.stateDir, transport: transport.name, pid: process.pid }, 'agent starting');
    const result = await agent.run();
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    status = result.status;
    logger.info({ event: 'exit', status, state: result.state, code: result.code }, `agent exiting with status ${status}`);
    // Not enrolled is a mistake of the person starting it, not a log event: say it where they look, with the fix.
    if (result.code === 'NOT_ENROLLED') throw new AgentError('NOT_ENROLLED', result.message, status);
  } finally {
    await release();
  }
  process.exitCode = status;
  // Nothing should be left running; if something is, do not hang for it.
  setTimeout(() => process.exit(status), 2000).unref();
}

async function status(flags: CommonFlags & { json?: boolean }): Promise<void> {
  const config = await loadAgentConfig({ file: flags.config, overrides: { stateDir: flags.stateDir } });
  const report = await readAgentStatus(config.stateDir, config.services);
  if (flags.json) printJson(report);
  else process.stdout.write(formatAgentStatus(report));
}

export function registerAgentCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const agent = program
    .command('agent')
    .description('the device agent: enroll, keep the tunnel up, report status')
    // Usage errors exit 3 here (documented), help and version 0.
    .exitOverride((err) => {
      throw err.exitCode === 0 ? err : new CommanderError(EXIT.USAGE, err.code, err.message);
    });
  const common = (cmd: Command): Command =>
    cmd.option('--config <file>', 'agent config (JSON)').option('--state-dir <dir>', 'state directory (default /var/lib/certunnel)');

  common(agent.command('enroll').description('make the device key, enroll with a single-use token, store the grant'))
    .option('--url <url>', 'broker API URL')
    .option('--pin <sha256//…>', "the broker API's TLS key pin")
    .option('--token-file <file>', 'read the enrollment token from FILE (or CERTUNNEL_ENROLL_TOKEN)')
    .option('--token <token>', 'the enrollment token (visible in ps; prefer --token-file)')
    .option('--name <name>', 'device name')
    .option('--hardware-serial <serial>', 'hardware serial (tokens may be bound to one)')
    .option('--insecure-http', 'allow a plain http broker URL')
    .option('--force', 'replace an existing enrollment (kept if the new one fails)')
    .option('--json', 'print JSON')
    .action((flags: EnrollFlags) => enroll(flags, env));

  common(agent.command('run').description('keep the reverse tunnel up, renew the certificate, reconnect'))
    .option('--token-file <file>', 'enroll with the token in FILE when not enrolled (an empty file: none; over enroll.token in --config)')
    .option('--transport <name>', 'ssh2 (default) or openssh')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace, silent')
    .action((flags: RunFlags) => run(flags));

  common(agent.command('status').description('enrollment, certificate expiry, tunnel state, last error'))
    .option('--json', 'print JSON')
    .action((flags: CommonFlags & { json?: boolean }) => status(flags));
}
