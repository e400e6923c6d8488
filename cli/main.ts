#!/usr/bin/env node
/**
 * The single `certunnel` entry point: parses the command line and dispatches.
 * Command groups are loaded lazily: `certunnel agent run` on a small device
 * must not pay for the broker's store and HTTP stack, nor an operator's
 * `certunnel ssh` for the agent's.
 */
import { Command, CommanderError } from 'commander';
import { CaError } from '../ca/index.js';
import { CliError } from './output.js';

type Register = (program: Command, env: NodeJS.ProcessEnv) => void;

/** Top-level command names → the module that registers them. */
const GROUPS: ReadonlyArray<{ readonly commands: readonly string[]; readonly load: () => Promise<Register> }> = [
  { commands: ['ca'], load: async () => (await import('./ca-commands.js')).registerCaCommands },
  { commands: ['init', 'broker', 'start'], load: async () => (await import('./broker-commands.js')).registerBrokerCommands },
  { commands: ['apikey'], load: async () => (await import('./apikey-commands.js')).registerApiKeyCommands },
  { commands: ['token', 'device', 'audit'], load: async () => (await import('./operator-commands.js')).registerOperatorCommands },
  { commands: ['ssh', 'ssh-proxy', 'ssh-config'], load: async () => (await import('./ssh-commands.js')).registerSshCommands },
  { commands: ['proxy'], load: async () => (await import('./proxy-commands.js')).registerProxyCommands },
  { commands: ['provision'], load: async () => (await import('./provision-commands.js')).registerProvisionCommands },
  { commands: ['agent'], load: async () => (await import('./agent-commands.js')).registerAgentCommands },
];

async function buildProgram(env: NodeJS.ProcessEnv, argv: readonly string[] = process.argv): Promise<Command> {
  const program = new Command('certunnel')
    .description('certificate-authority-centric reverse SSH tunnel broker')
    .showHelpAfterError()
    .exitOverride();
  const name = argv.slice(2).find((arg) => !arg.startsWith('-'));
  const wanted = GROUPS.filter((g) => name !== undefined && g.commands.includes(name));
  // Help, no command, or an unknown one: register everything so commander can list or suggest.
  for (const group of wanted.length > 0 ? wanted : GROUPS) (await group.load())(program, env);
  return program;
}

/** Codes travel in error objects; print "certunnel: CODE: message" and nothing secret. */
function report(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode;
  const coded = err as { code?: unknown; message?: unknown; exitCode?: unknown };
  if (err instanceof CliError || err instanceof CaError || (typeof coded.code === 'string' && /^[A-Z_]+$/.test(coded.code))) {
    process.stderr.write(`certunnel: ${String(coded.code)}: ${String(coded.message)}\n`);
    return typeof coded.exitCode === 'number' ? coded.exitCode : 1;
  }
  process.stderr.write(`certunnel: INTERNAL: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

try {
  await (await buildProgram(process.env)).parseAsync(process.argv);
} catch (err) {
  process.exitCode = report(err);
}
