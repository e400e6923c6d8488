/**
 * The `certunnel` program: every command group, registered lazily.
 * Command groups are loaded on demand: `certunnel agent run` on a small device
 * must not pay for the broker's store and HTTP stack, nor an operator's
 * `certunnel ssh` for the agent's.
 */
import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { JSON_OPTION_HELP } from './output.js';

type Register = (program: Command, env: NodeJS.ProcessEnv) => void;

/** Top-level command names → the module that registers them. */
const GROUPS: ReadonlyArray<{ readonly commands: readonly string[]; readonly load: () => Promise<Register> }> = [
  { commands: ['ca'], load: async () => (await import('./ca-commands.js')).registerCaCommands },
  { commands: ['init', 'broker', 'start'], load: async () => (await import('./broker-commands.js')).registerBrokerCommands },
  { commands: ['node', 'join'], load: async () => (await import('./node-commands.js')).registerNodeCommands },
  { commands: ['rotate'], load: async () => (await import('./rotate-commands.js')).registerRotateCommands },
  { commands: ['apikey'], load: async () => (await import('./apikey-commands.js')).registerApiKeyCommands },
  { commands: ['token', 'device', 'audit'], load: async () => (await import('./operator-commands.js')).registerOperatorCommands },
  { commands: ['ssh', 'ssh-proxy', 'ssh-config'], load: async () => (await import('./ssh-commands.js')).registerSshCommands },
  { commands: ['proxy'], load: async () => (await import('./proxy-commands.js')).registerProxyCommands },
  { commands: ['provision'], load: async () => (await import('./provision-commands.js')).registerProvisionCommands },
  { commands: ['store'], load: async () => (await import('./store-commands.js')).registerStoreCommands },
  { commands: ['agent'], load: async () => (await import('./agent-commands.js')).registerAgentCommands },
];

/** The package's version, from package.json beside the sources (cli/main.ts) or the build (dist/cli/main.js). */
async function readVersion(): Promise<string> {
  for (const rel of ['../package.json', '../../package.json']) {
    const pkg = await readFile(new URL(rel, import.meta.url), 'utf8').then((t) => JSON.parse(t) as { name?: string; version?: string }, () => undefined);
    if (pkg?.name === 'certunnel' && pkg.version) return pkg.version;
  }
  return 'unknown';
}

/** Every command takes --json (output.ts says what it does); commands that declare it themselves keep their help text. */
function addJsonEverywhere(cmd: Command): void {
  for (const sub of cmd.commands) {
    if (sub.commands.length > 0) addJsonEverywhere(sub);
    else if (!sub.options.some((o) => o.long === '--json')) sub.option('--json', JSON_OPTION_HELP);
  }
}

export async function buildProgram(env: NodeJS.ProcessEnv, argv: readonly string[], json: boolean): Promise<Command> {
  const program = new Command('certunnel')
    .description('certificate-authority-centric reverse SSH tunnel broker')
    .version(await readVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help for a command')
    // `certunnel --version` only before a command: `ca krl --version N` is the KRL's own option.
    .enablePositionalOptions()
    .exitOverride();
  // Under --json, commander's own error text would not be JSON: reportError says it instead.
  if (json) program.configureOutput({ writeErr: () => undefined });
  else program.showHelpAfterError();
  const name = argv.slice(2).find((arg) => !arg.startsWith('-'));
  const wanted = GROUPS.filter((g) => name !== undefined && g.commands.includes(name));
  // Help, no command, or an unknown one: register everything so commander can list or suggest.
  for (const group of wanted.length > 0 ? wanted : GROUPS) (await group.load())(program, env);
  addJsonEverywhere(program);
  return program;
}

