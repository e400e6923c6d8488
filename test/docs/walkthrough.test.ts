/**
 * docs/walkthrough.md, run top to bottom as written: every `$ ` command in
 * one bash, in a temporary directory, with `certunnel` (this checkout,
 * through tsx) and `dev-device.sh` (scripts/) on the PATH; commands that
 * end in `&` keep running as jobs of that shell. Each command must exit 0
 * and print what the page records (compared as testkit/walkthrough.ts
 * says: ids, keys, times and numbers by shape, every word as written).
 *
 * The ports the page names (API 8443 and 8444, SSH 2222, the device's sshd
 * 2022 and web page 8080, the pool 20000-20099) are swapped for free ones
 * in the commands, since other tests run beside this one; the recorded
 * output compares numbers by shape anyway. Paths under the temporary
 * directory read as /tmp/walkthrough, where the page was recorded.
 *
 * The page is recorded as root (owners, flash's root-only chown), as CI
 * runs; as another user the test is skipped. To re-record after a change
 * of output, run with WALKTHROUGH_TRANSCRIPT=FILE: FILE gets every command
 * and its real output, in the page's terms (paths and ports).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliArgs, REPO_ROOT } from '../../testkit/cli.js';
import { freePortBlock } from '../../testkit/gateway.js';
import { runCommand } from '../../testkit/openssh.js';
import { matchOutput, parseWalkthrough, readInOrder, substitutePorts, WalkShell, type StreamCursor, type WalkStep } from '../../testkit/walkthrough.js';

const PAGE = join(REPO_ROOT, 'docs/walkthrough.md');
const DEVICE_SCRIPT = join(REPO_ROOT, 'scripts/dev-device.sh');
const RECORDED_IN = '/tmp/walkthrough';
const DOC_PORTS = [8443, 8444, 2222, 2022, 8080] as const;
const DOC_POOL = { first: 20000, size: 100 } as const;
const COMMAND_TIMEOUT_MS = 120_000;
const LATER_OUTPUT_TIMEOUT_MS = 60_000;

/** Doc port -> a port free now: the five service ports, and the pool as a block. */
async function choosePorts(): Promise<Map<number, number>> {
  for (;;) {
    const services = await freePortBlock(DOC_PORTS.length);
    const pool = await freePortBlock(DOC_POOL.size);
    if (pool.last < services.first || pool.first > services.last) {
      const map = new Map<number, number>(DOC_PORTS.map((p, i) => [p, services.first + i]));
      for (let k = 0; k < DOC_POOL.size; k++) map.set(DOC_POOL.first + k, pool.first + k);
      return map;
    }
  }
}

/** The environment of the walkthrough's shell: a clean one, with nothing of this process's certunnel or ssh agent. */
function shellEnv(dir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CERTUNNEL_') && k !== 'SSH_AUTH_SOCK' && !k.startsWith('NODE_')) env[k] = v;
  }
  return { ...env, PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}`, HOME: join(dir, 'home'), TZ: 'UTC' };
}

/** certunnel from this checkout (through tsx, no build), and the device script, in DIR/bin. */
async function installCommands(dir: string): Promise<void> {
  await mkdir(join(dir, 'bin'));
  await mkdir(join(dir, 'home'), { mode: 0o700 });
  // --import tsx would be looked up from the working directory: name tsx's loader by its path.
  const args = cliArgs([]).map((a) => (a === 'tsx' ? import.meta.resolve('tsx') : a));
  const words = [process.execPath, ...args].map((w) => `'${w}'`).join(' ');
  await writeFile(join(dir, 'bin/certunnel'), `#!/bin/sh\nexec ${words} "$@"\n`);
  await chmod(join(dir, 'bin/certunnel'), 0o755);
  await symlink(DEVICE_SCRIPT, join(dir, 'bin/dev-device.sh'));
}

const isRoot = process.getuid?.() === 0;

(isRoot ? test : test.skip)('docs/walkthrough.md runs top to bottom as written, with the output it records', async (t) => {
  t.timeout(600_000);
  const steps = parseWalkthrough(await readFile(PAGE, 'utf8'));
  t.true(steps.filter((s) => s.kind === 'command').length >= 30, 'the page has its commands');
  const dir = await mkdtemp(join(tmpdir(), 'walkthrough-'));
  const outDir = join(dir, '.out');
  await mkdir(outDir);
  await installCommands(dir);
  const ports = await choosePorts();
  const shell = new WalkShell(dir, shellEnv(dir), outDir);
  const inPageTerms = (text: string): string => text.replaceAll(dir, RECORDED_IN);
  const transcript: string[] = [];
  // Background commands: their stdout and stderr files, and how far the page has read each.
  const jobs: Array<{ files: readonly string[]; cursors: StreamCursor[]; line: number }> = [];

  const readFileLines = async (file: string): Promise<string[]> => inPageTerms(await shell.output(file)).split('\n');

  /** Waits until one job prints EXPECTED in order (after what the page has read of it). */
  async function awaitLater(expected: readonly string[], where: string, only?: (typeof jobs)[number]): Promise<void> {
    const candidates = only ? [only] : jobs;
    const deadline = Date.now() + LATER_OUTPUT_TIMEOUT_MS;
    for (;;) {
      for (const job of candidates) {
        const lines = await Promise.all(job.files.map(readFileLines));
        job.cursors.forEach((c, i) => (c.lines = lines[i]!));
        if (readInOrder(expected, job.cursors)) return;
      }
      if (Date.now() > deadline) {
        const outputs = candidates.map((j) => `--- job from line ${j.line}:\n${j.cursors.map((c) => c.lines.join('\n')).join('\n--- its stderr:\n')}`);
        throw new Error(`${where}: no background command printed, in this order:\n${expected.join('\n')}\n${outputs.join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async function runStep(step: WalkStep): Promise<void> {
    const where = `docs/walkthrough.md:${step.line}`;
    if (step.kind === 'later-output') {
      transcript.push(`# ${where}: later output\n${step.expected.join('\n')}`);
      await awaitLater(step.expected, where);
      return;
    }
    const { code, outFile, errFile } = await shell.run(substitutePorts(step.command, ports), step.background, COMMAND_TIMEOUT_MS);
    if (step.background) {
      const job = { files: [outFile, errFile], cursors: [{ lines: [], read: 0 }, { lines: [], read: 0 }], line: step.line };
      jobs.push(job);
      transcript.push(`$ ${step.command} &`);
      if (step.expected.length > 0) await awaitLater(step.expected, where, job);
      return;
    }
    const output = inPageTerms(await shell.output(outFile));
    transcript.push(`$ ${step.command}\n${output.trimEnd()}`);
    t.is(code, 0, `${where}: \`${step.command}\` exited with ${code}:\n${output}`);
    const mismatch = matchOutput(step.expected, output.split('\n'));
    t.is(mismatch, undefined, `${where}: \`${step.command}\` did not print the recorded line\n  ${mismatch}\nit printed:\n${output}`);
    if (code !== 0 || mismatch !== undefined) throw new Error(`stopped at ${where}`);
  }

  try {
    for (const step of steps) await runStep(step);
  } catch (err) {
    const bashSaid = shell.transcript().replace(/__walk_done_\d+__ \d+\n/g, '');
    const sshdLog = await readFile(join(dir, 'device/sshd.log'), 'utf8').catch(() => '(none)');
    t.fail(`${err instanceof Error ? err.message : String(err)}\nbash said: ${bashSaid}\nthe device's sshd log: ${sshdLog.slice(-3000)}`);
  } finally {
    if (process.env.WALKTHROUGH_TRANSCRIPT) {
      const jobOutputs = await Promise.all(jobs.map(async (j) => `# job from line ${j.line}\n${(await Promise.all(j.files.map(readFileLines))).map((l) => l.join('\n')).join('\n# its stderr\n')}`));
      const docPorts = new Map([...ports].map(([doc, used]) => [used, doc]));
      await writeFile(process.env.WALKTHROUGH_TRANSCRIPT, `${substitutePorts([...transcript, ...jobOutputs].join('\n'), docPorts)}\n`);
    }
    // The device's sshd runs as a daemon, out of the shell's process group.
    if (existsSync(join(dir, 'device'))) await runCommand(DEVICE_SCRIPT, ['stop', join(dir, 'device')]);
    await shell.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
