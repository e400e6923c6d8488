/**
 * What every command shares (cli/output.ts, cli/program.ts): --version, help
 * text on every option, and --json: a result as one JSON document on stdout,
 * a failure as {"error":{"code","message"}} on stderr with the same exit status.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { buildProgram } from '../../cli/program.js';
import { REPO_ROOT, runCli } from '../../testkit/cli.js';
import { makeOpensshKey, withTempDir } from '../../testkit/openssh.js';

interface JsonError {
  error: { code: string; message: string };
}

/** Every line on stderr is JSON (notices included); the last is the error. */
function jsonError(stderr: string): JsonError['error'] {
  const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as Partial<JsonError> & { notice?: string });
  if (lines.slice(0, -1).some((l) => typeof l.notice !== 'string')) throw new Error(`not notices: ${stderr}`);
  return (lines.at(-1) as JsonError).error;
}

function walk(cmd: Command, path: string[] = []): Array<{ path: string; cmd: Command }> {
  return cmd.commands.flatMap((sub) => [{ path: [...path, sub.name()].join(' '), cmd: sub }, ...walk(sub, [...path, sub.name()])]);
}

test('ok/--version prints the package version', async (t) => {
  const { version } = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await runCli([flag]);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout.trim(), version);
  }
});

test('ok/every option of every command has help text, and every command takes --json', async (t) => {
  const program = await buildProgram({}, ['node', 'certunnel'], false);
  const commands = walk(program);
  t.true(commands.length > 25);
  for (const { path, cmd } of commands) {
    for (const option of cmd.options) t.not(option.description.trim(), '', `${path} ${option.flags}`);
    if (cmd.commands.length === 0) t.true(cmd.options.some((o) => o.long === '--json'), `${path} --json`);
  }
});

const ERROR_CASES: Array<[string, string[], string, number]> = [
  ['fail/unknown option', ['device', 'list', '--bogus', '--json'], 'BAD_ARGUMENT', 1],
  ['fail/unknown command', ['nosuch', '--json'], 'UNKNOWN_COMMAND', 1],
  ['fail/missing required option', ['init', '--json'], 'BAD_ARGUMENT', 1],
  ['fail/no API (operator command)', ['device', 'list', '--json'], 'BAD_ARGUMENT', 1],
  ['fail/no API (ssh-config, which ignored --json)', ['ssh-config', '--json'], 'BAD_ARGUMENT', 1],
  ['fail/no API (ssh, whose stdout is the session)', ['ssh', 'kiosk-1', '--json'], 'BAD_ARGUMENT', 1],
  ['fail/bad nginx listen host (no config injection)', ['proxy', 'nginx-config', '--domain', 'd.example', '--broker', 'http://127.0.0.1:8443', '--listen', '0.0.0.0;include x:80', '--json'], 'BAD_ARGUMENT', 1],
];

for (const [title, args, code, status] of ERROR_CASES) {
  test(`${title}: --json puts the error as JSON on stderr`, async (t) => {
    const r = await runCli(args, { CERTUNNEL_API_URL: '', CERTUNNEL_API_KEY: '' });
    t.is(r.code, status, r.stderr);
    t.is(r.stdout, '');
    const error = jsonError(r.stderr);
    t.is(error.code, code);
    t.true(error.message.length > 0);
  });
}

test('ok/init --json, ca inspect --json, nginx-config --json and host:port', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--json']);
    t.is(init.code, 0, init.stderr);
    const summary = JSON.parse(init.stdout) as { adminKey: string; apiPin: string; dataDir: string };
    t.regex(summary.adminKey, /^ctk_/);
    t.is(summary.apiPin, (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim());

    const hostCert = join(data, 'ssh', 'host_key-cert.pub');
    const inspect = await runCli(['ca', 'inspect', hostCert, '--ca', join(data, 'ca', 'host_ca.pub'), '--type', 'host', '--json']);
    t.is(inspect.code, 0, inspect.stderr);
    t.true((JSON.parse(inspect.stdout) as { verification: { ok: boolean } }).verification.ok);
    const { path: otherCa } = await makeOpensshKey(dir, 'other_ca');
    const refused = await runCli(['ca', 'inspect', hostCert, '--ca', `${otherCa}.pub`, '--type', 'host', '--json']);
    t.is(refused.code, 3, 'a failed verification is exit status 3, with or without --json');
    t.false((JSON.parse(refused.stdout) as { verification: { ok: boolean } }).verification.ok);

    const nginx = await runCli(['proxy', 'nginx-config', '--data', data, '--listen', '127.0.0.1:8080', '--json']);
    t.is(nginx.code, 0, nginx.stderr);
    const config = (JSON.parse(nginx.stdout) as { config: string }).config;
    t.regex(config, /^\s*listen 127\.0\.0\.1:8080;$/m);
    t.notRegex(config, /^\s*listen 8080;$/m, 'the generated listen binds the given host only');
    const bare = await runCli(['proxy', 'nginx-config', '--data', data, '--listen', '8080']);
    t.regex(bare.stdout, /^\s*listen 8080;$/m, 'a bare port is still accepted');
  });
});

test('fail/agent run when not enrolled says, on stderr, which flag enrolls it (exit status 4)', async (t) => {
  await withTempDir(async (dir) => {
    for (const json of [false, true]) {
      const r = await runCli(['agent', 'run', '--state-dir', join(dir, 'state'), '--log-level', 'warn', ...(json ? ['--json'] : [])]);
      t.is(r.code, 4, r.stderr);
      const message = json ? jsonError(r.stderr).message : r.stderr;
      t.regex(message, /certunnel agent enroll --url .*--token-file/);
      t.regex(message, /agent run --token-file/);
    }
  });
});
