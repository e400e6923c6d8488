/** `certunnel init`, `certunnel broker`, `certunnel start`: running a broker from a data directory. */
import { access } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  createLogger, DATABASE_URL_ENV, dataPaths, ephemeralOverlapWarning, initDataDir, loadConfig, readEphemeralRange, startBroker, type BrokerConfig, type Logger,
} from '../broker/compose/index.js';
import { CliError, JSON_OPTION_HELP, notice, printResult } from './output.js';
import { readPassphrase } from './passphrase.js';

interface InitFlags {
  data: string;
  domain?: string;
  portRange?: string;
  portsPerDevice?: string;
  sshListen?: string;
  apiListen?: string;
  sshMode?: string;
  insecureHttp?: boolean;
  trustProxy?: boolean;
  passphraseFile?: string;
  databaseUrl?: string;
  json?: boolean;
}

function initConfig(flags: InitFlags): Record<string, unknown> {
  const config: Record<string, Record<string, unknown> | string> = { api: {}, ssh: {}, ports: {} };
  if (flags.domain) config.domain = flags.domain;
  const api = config.api as Record<string, unknown>;
  const ssh = config.ssh as Record<string, unknown>;
  const ports = config.ports as Record<string, unknown>;
  if (flags.apiListen) api.listen = flags.apiListen;
  if (flags.insecureHttp) api.insecureHttp = true;
  // A new plain-HTTP broker says whether it believes X-Forwarded-For, rather than inheriting it from insecureHttp.
  if (flags.insecureHttp || flags.trustProxy) api.trustProxy = flags.trustProxy === true;
  if (flags.sshListen) ssh.listen = flags.sshListen;
  if (flags.sshMode) ssh.mode = flags.sshMode;
  if (flags.portRange) {
    const m = /^(\d+)-(\d+)$/.exec(flags.portRange);
    if (!m) throw new CliError('BAD_ARGUMENT', '--port-range must be FIRST-LAST, e.g. 20000-29999');
    ports.first = Number(m[1]);
    ports.last = Number(m[2]);
  }
  if (flags.portsPerDevice) ports.perDevice = Number(flags.portsPerDevice);
  return config;
}

async function runInit(flags: InitFlags, env: NodeJS.ProcessEnv, next: string): Promise<void> {
  const databaseUrl = flags.databaseUrl ?? (env[DATABASE_URL_ENV] || undefined);
  const result = await initDataDir({ dir: flags.data, config: initConfig(flags), passphrase: await readPassphrase(flags.passphraseFile, env), databaseUrl });
  const overlap = ephemeralOverlapWarning(result.config.ports, readEphemeralRange());
  const pinFile = dataPaths(flags.data).apiPin;
  const summary = {
    dataDir: flags.data, userCa: result.userCaFingerprint, hostCa: result.hostCaFingerprint, apiPin: result.apiPin, apiPinFile: pinFile,
    adminKey: result.adminKey, warnings: overlap ? [overlap] : [],
  };
  printResult(flags.json, summary, [
    `Initialised certunnel broker data in ${flags.data}`,
    `  user CA:  ${result.userCaFingerprint}\n  host CA:  ${result.hostCaFingerprint}`,
    `  API pin:  ${result.apiPin}   (devices pin this; also in ${pinFile})`,
    `\nAdmin API key (shown once, store it now):\n  ${result.adminKey}`,
    `\nNext: ${next}`,
    `  export CERTUNNEL_API_KEY=<the admin key above>`,
    `  certunnel token create --data ${flags.data}     # a single-use enrollment token for a device`,
    '',
  ].join('\n'));
  if (overlap && !flags.json) notice(`warning: ${overlap}`);
}

interface ServeFlags {
  data: string;
  json?: boolean;
  apiListen?: string;
  sshListen?: string;
  sshMode?: string;
  insecureHttp?: boolean;
  trustProxy?: boolean;
  logLevel?: string;
  passphraseFile?: string;
}

function serveOverrides(flags: ServeFlags): Record<string, unknown> {
  return {
    api: { listen: flags.apiListen, insecureHttp: flags.insecureHttp ? true : undefined, trustProxy: flags.trustProxy ? true : undefined },
    ssh: { listen: flags.sshListen, mode: flags.sshMode },
    log: { level: flags.logLevel },
  };
}

/** Exit status after an unexpected error (sysexits EX_SOFTWARE): the service manager restarts the broker. */
const EXIT_UNEXPECTED = 70;

/**
 * The last line of defence: an exception nobody caught, or a promise
 * rejection nobody handled, leaves the process in an unknown state (a
 * half-done revocation, a listener gone), so the broker logs it and exits
 * rather than run on; systemd (Restart=on-failure) starts a clean one. Known
 * hostile input never gets here: it is refused where it is read.
 */
function exitOnUnexpectedError(logger: Logger): void {
  const die = (err: unknown, origin: string): void => {
    logger.fatal({ err, origin }, 'unexpected error: exiting for the service manager to restart the broker');
    logger.flush();
    process.exit(EXIT_UNEXPECTED);
  };
  process.on('uncaughtException', (err) => die(err, 'uncaughtException'));
  process.on('unhandledRejection', (reason) => die(reason, 'unhandledRejection'));
}

async function serve(flags: ServeFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const config: BrokerConfig = await loadConfig({ dataDir: flags.data, env, overrides: serveOverrides(flags) });
  const logger = createLogger(config.log.level);
  exitOnUnexpectedError(logger);
  const broker = await startBroker({ config, logger, passphrase: await readPassphrase(flags.passphraseFile, env), env });
  // One line on stdout that scripts (and tests) can wait for.
  process.stdout.write(`${JSON.stringify({ ready: true, apiUrl: broker.apiUrl, apiPort: broker.apiPort, sshPort: broker.sshPort })}\n`);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'shutting down');
      broker.close().then(resolve, resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  logger.flush();
}

function addServeOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--data <dir>', 'broker data directory')
    .option('--api-listen <host:port>', 'HTTPS API listen address (overrides config)')
    .option('--ssh-listen <host:port>', 'SSH gateway listen address (overrides config)')
    .option('--ssh-mode <mode>', 'embedded or openssh')
    .option('--insecure-http', 'serve plain HTTP (only behind a TLS-terminating proxy)')
    .option('--trust-proxy', 'believe the last X-Forwarded-For entry (only when every client comes through your TLS proxy)')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace, silent')
    .option('--passphrase-file <file>', 'passphrase of the CA keys (or set CERTUNNEL_CA_PASSPHRASE)');
}

function addInitOptions(cmd: Command): Command {
  return cmd
    .option('--domain <domain>', 'domain for device hostnames and certificates', undefined)
    .option('--port-range <first-last>', 'pool of tunnel ports, e.g. 20000-29999')
    .option('--ports-per-device <n>', 'ports in each device block (default 2: ssh, http)')
    .option('--ssh-listen <host:port>', 'SSH gateway listen address (default 0.0.0.0:2222)')
    .option('--api-listen <host:port>', 'HTTPS API listen address (default 0.0.0.0:8443)')
    .option('--ssh-mode <mode>', 'embedded (default) or openssh')
    .option('--insecure-http', 'serve plain HTTP (only behind a TLS-terminating proxy)')
    .option('--trust-proxy', 'believe the last X-Forwarded-For entry (only when every client comes through your TLS proxy)')
    .option('--passphrase-file <file>', 'encrypt the CA keys with this passphrase (or set CERTUNNEL_CA_PASSPHRASE)')
    .option('--database-url <url>', `the store in this empty PostgreSQL database instead of SQLite (or set ${DATABASE_URL_ENV}); kept in DIR/database.url, 0600`);
}

export function registerBrokerCommands(program: Command, env: NodeJS.ProcessEnv): void {
  addInitOptions(program.command('init').description('create a broker data directory (config, database, CAs, keys, TLS, admin API key)'))
    .requiredOption('--data <dir>', 'data directory to create')
    .option('--json', JSON_OPTION_HELP)
    .action((flags: InitFlags) => runInit(flags, env, `certunnel broker --data ${flags.data}     # run it; then, in another shell:`));

  addServeOptions(program.command('broker').description('run the broker (HTTPS API and SSH gateway) from a data directory'))
    .action((flags: ServeFlags) => serve(flags, env));

  // start takes every init option (used on the first run only) besides the broker's own.
  addServeOptions(program.command('start').description('initialise the data directory on first run, then run the broker'))
    .option('--domain <domain>', 'first run: domain for device hostnames and certificates')
    .option('--port-range <first-last>', 'first run: pool of tunnel ports, e.g. 20000-29999')
    .option('--ports-per-device <n>', 'first run: ports in each device block (default 2: ssh, http)')
    .option('--json', JSON_OPTION_HELP)
    .action(async (flags: ServeFlags & InitFlags) => {
      const initialised = await access(dataPaths(flags.data).config).then(() => true, () => false);
      if (!initialised) await runInit(flags, env, 'the broker starts now; in another shell:');
      await serve(flags, env);
    });
}
