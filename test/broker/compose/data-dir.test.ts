import test from 'ava';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { cliArgs, REPO_ROOT, runCli } from '../../../testkit/cli.js';
import { runCommand, withTempDir } from '../../../testkit/openssh.js';

const INIT = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '21000-21999'];

/**
 * `certunnel init` with a file-size limit (ulimit -f, in KiB): a real write
 * failure after the keys are generated, when SQLite's database grows past the
 * limit. Node ignores SIGXFSZ, so the write fails with EFBIG and init fails.
 */
function initWithFileSizeLimit(data: string, kib: number): Promise<{ code: number; stderr: string }> {
  return runCommand('bash', ['-c', `ulimit -f ${kib} && exec "$0" "$@"`, process.execPath, ...cliArgs(['init', '--data', data, ...INIT])], { cwd: REPO_ROOT });
}

for (const [title, existing] of [['a new directory', false], ['an existing empty directory (a mount point)', true]] as const) {
  test(`fail/init that fails after key generation leaves nothing behind (${title}); the retry succeeds`, async (t) => {
    await withTempDir(async (dir) => {
      const data = join(dir, 'data');
      if (existing) await mkdir(data, { mode: 0o755 });
      const failed = await initWithFileSizeLimit(data, 16);
      t.not(failed.code, 0, 'init fails when its database cannot grow');
      t.regex(failed.stderr, /^certunnel: [A-Z_]+: /m, "a coded error, not a crash");
      // Nothing of the failed attempt stays: no keys, no staging directory beside it.
      if (existing) t.deepEqual(await readdir(data), []);
      else t.deepEqual(await readdir(dir), []);
      const retry = await runCli(['init', '--data', data, ...INIT]);
      t.is(retry.code, 0, retry.stderr);
      t.is((await stat(join(data, 'ca', 'user_ca'))).mode & 0o777, 0o600);
      t.deepEqual((await readdir(dir)).sort(), ['data']);
    });
  });
}

test('fail/init over an existing broker says which directory to use instead, and changes nothing', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    t.is((await runCli(['init', '--data', data, ...INIT])).code, 0);
    const before = await readdir(data, { recursive: true });
    const again = await runCli(['init', '--data', data, ...INIT]);
    t.is(again.code, 1);
    t.regex(again.stderr, /DATA_DIR_EXISTS: .*certunnel broker --data .*data.*--data <new directory>/);
    t.deepEqual(await readdir(data, { recursive: true }), before);
  });
});
