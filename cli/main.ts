#!/usr/bin/env node
/** The single `certunnel` entry point: parses the command line and dispatches. */
import { Command, CommanderError } from 'commander';
import { CaError } from '../ca/index.js';
import { registerAgentCommands } from './agent-commands.js';
import { registerBrokerCommands } from './broker-commands.js';
import { registerCaCommands } from './ca-commands.js';
import { registerOperatorCommands } from './operator-commands.js';
import { registerProxyCommands } from './proxy-commands.js';
import { registerSshCommands } from './ssh-commands.js';
import { registerProvisionCommands } from './provision-commands.js';
import { CliError } from './output.js';

export function buildProgram(env: NodeJS.ProcessEnv): Command {
  const program = new Command('certunnel')
    .description('certificate-authority-centric reverse SSH tunnel broker')
    .showHelpAfterError()
    .exitOverride();
  registerCaCommands(program, env);
  registerBrokerCommands(program, env);
  registerOperatorCommands(program, env);
  registerSshCommands(program, env);
  registerProxyCommands(program, env);
  registerProvisionCommands(program, env);
  registerAgentCommands(program, env);
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
  await buildProgram(process.env).parseAsync(process.argv);
} catch (err) {
  process.exitCode = report(err);
}
