/**
 * The broker process as systemd sees it: logs are JSON lines on stderr,
 * stdout carries only the ready line; an exception nobody caught is logged
 * and ends the process with status 70, for the service manager to restart it.
 */
import test from 'ava';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli, spawnBroker } from '../../testkit/cli.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { withTempDir } from '../../testkit/openssh.js';

const THROWER = fileURLToPath(new URL('./fixtures/throw-on-sigusr2.ts', import.meta.url));

test('ok/logs on stderr, stdout only the ready line; an uncaught exception is logged and exits 70', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const init = await runCli(['init', '--data', data, '--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0']);
    t.is(init.code, 0, init.stderr);
    const broker = await spawnBroker(['--data', data, '--log-level', 'info'], { NODE_OPTIONS: `--import=tsx --import=${THROWER}` });
    let stdout = '';
    broker.child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    try {
      await waitFor(() => broker.stderr().includes('"level":"info"'), 'an info log line on stderr');
      const exited = new Promise<number | null>((resolve) => broker.child.once('exit', resolve));
      broker.child.kill('SIGUSR2');
      t.is(await exited, 70);
      const fatal = broker.stderr().split('\n').filter((l) => l.includes('"level":"fatal"'));
      t.is(fatal.length, 1, broker.stderr());
      t.regex(fatal[0]!, /"origin":"uncaughtException"/);
      t.regex(fatal[0]!, /an unexpected bug/);
      t.false(stdout.includes('"level"'), `no log line on stdout: ${stdout}`);
    } finally {
      await broker.stop('SIGKILL');
    }
  });
});
