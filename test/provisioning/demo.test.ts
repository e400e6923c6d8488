/**
 * scripts/demo.ts (`npm run demo`) runs to completion — every step, a
 * request through the broker, the revocation cutting the tunnel — and
 * leaves nothing behind: no process, no directory, no secret on screen.
 * Ctrl-C in the middle cleans up just the same.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import { join } from 'node:path';
import { REPO_ROOT } from '../../testkit/cli.js';
import { waitFor } from '../../testkit/ssh-client.js';

interface DemoRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runDemo(interruptWhen?: (stdout: string) => boolean | Promise<boolean>, args: readonly string[] = []): Promise<DemoRun> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CERTUNNEL_')) env[k] = v;
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts/demo.ts'), ...args], { cwd: REPO_ROOT, env });
  let stdout = '';
  let stderr = '';
  let interrupted = false;
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (interruptWhen && !interrupted) {
      interrupted = true;
      void Promise.resolve(interruptWhen(stdout)).then((now) => (now ? child.kill('SIGINT') : (interrupted = false)));
    }
  });
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

const workDir = (stdout: string): string => /^Everything lives in (\S+) /m.exec(stdout)?.[1] ?? 'not printed';
const pidOf = (stdout: string): number => Number(/SSH gateway \S+ \(pid (\d+)\)/.exec(stdout)?.[1]);
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const gone = (path: string): Promise<boolean> => access(path).then(() => false, () => true);

test.serial('demo/runs to completion: each step, a request through the broker, the revocation cuts the tunnel; nothing left behind', async (t) => {
  const run = await runDemo();
  t.is(run.code, 0, run.stdout + run.stderr);
  for (let i = 1; i <= 9; i++) t.regex(run.stdout, new RegExp(`^\\[${i}/9\\] `, 'm'));
  t.regex(run.stdout, /^ +console: https:\/\/127\.0\.0\.1:\d+\/console\/$/m);
  t.regex(run.stdout, /^ +sign in with the admin API key in \S+\/console-admin\.key$/m);
  t.regex(run.stdout, /^ +HTTP 200: hello from kiosk-0001: GET \/ served on the device$/m);
  t.regex(run.stdout, /^ +revoked dev_\w+ \(kiosk-0001\)/m);
  t.regex(run.stdout, /^ +HTTP 403 DEVICE_REVOKED$/m);
  t.regex(run.stdout, /^ +the tunnel is gone: nothing listens on \d+/m);
  t.regex(run.stdout, /^ +agent: exited with status 10 /m);
  t.regex(run.stdout, /^demo complete in [\d.]+ s; stopped every process and removed \$DEMO$/m);
  t.true(await gone(workDir(run.stdout)), 'the temporary directory is removed');
  t.false(alive(pidOf(run.stdout)), 'the broker is stopped');
  const all = run.stdout + run.stderr;
  t.false(/cte_[A-Za-z0-9_-]/.test(all), 'no enrollment token shown');
  t.false(/ctk_[a-z]+_[a-z2-7]{5}/.test(all), 'API keys only shortened');
});

test.serial('demo/Ctrl-C in the middle stops every process and removes the directory', async (t) => {
  const run = await runDemo((out) => /^\[4\/9\] /m.test(out));
  t.is(run.code, 130, run.stdout + run.stderr);
  t.regex(run.stderr, /demo: SIGINT: cleaning up/);
  t.true(await gone(workDir(run.stdout)));
  const pid = pidOf(run.stdout);
  t.true(Number.isInteger(pid));
  await waitFor(() => !alive(pid), 'the broker to be gone', 5000);
  t.false(alive(pid));
});

test.serial('demo/--keep leaves the broker and its console up until Ctrl-C, then cleans up', async (t) => {
  let consoleAnswer: { status?: number; location?: string } = {};
  const run = await runDemo(async (out) => {
    if (!/^--keep: /m.test(out)) return false;
    const url = /^ +console: (\S+)$/m.exec(out)![1]!;
    consoleAnswer = await new Promise((resolve) => {
      httpsGet(url, { rejectUnauthorized: false }, (res) => {
        res.resume();
        resolve({ status: res.statusCode, location: res.headers.location });
      }).on('error', () => resolve({}));
    });
    return true;
  }, ['--keep']);
  t.deepEqual(consoleAnswer, { status: 302, location: '/console/sign-in' }, 'the console answered while the demo was kept');
  t.is(run.code, 0, run.stdout + run.stderr);
  t.true(await gone(workDir(run.stdout)));
  await waitFor(() => !alive(pidOf(run.stdout)), 'the broker to be gone', 5000);
  t.false(/ctk_[a-z]+_[a-z2-7]{5}/.test(run.stdout + run.stderr), 'the console key is in a file, not on screen');
});
