#!/usr/bin/env node
/** The single `certunnel` entry point: builds the program (program.ts), runs it, reports a failure (output.ts). */
import { buildProgram } from './program.js';
import { reportError, setJsonOutput, wantsJson } from './output.js';

const json = wantsJson(process.argv.slice(2));
setJsonOutput(json);
try {
  await (await buildProgram(process.env, process.argv, json)).parseAsync(process.argv);
} catch (err) {
  process.exitCode = reportError(err, json);
}
