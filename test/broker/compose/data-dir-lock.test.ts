import test from 'ava';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { cliArgs, REPO_ROOT, runCli, spawnBroker } from '../../../testkit/cli.js';
import { runCommand, withTempDir, type RunResult } from '../../../testkit/openssh.js';

const INIT = ['--api-listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', '--port-range', '21000-21999'];

/** `certunnel broker` that must exit on its own: after 60 s, timeout(1) ends it with status 124. */
function runBrokerBounded(args: readonly string[]): Promise<RunResult> {
  return runCommand('timeout', ['60', process.execPath, ...cliArgs(['broker', ...args])], { cwd: REPO_ROOT });
}

async function runtimePid(data: string): Promise<number> {
  return (JSON.parse(await readFile(join(data, 'broker.runtime.json'), 'utf8')) as { pid: number }).pid;
}

test('fail/a second broker on the same data directory says which pid holds it, and leaves the first one\'s files alone', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    t.is((await runCli(['init', '--data', data, ...INIT])).code, 0);
    const first = await spawnBroker(['--data', data, '--log-level', 'warn']);
    try {
      // Other (ephemeral) ports, so only the lock can stop it.
      const second = await runBrokerBounded(['--data', data, '--log-level', 'warn']);
      t.is(second.code, 1);
      t.regex(second.stderr, new RegExp(`^certunnel: DATA_DIR_LOCKED: .*pid ${first.child.pid}\\b`, 'm'));
      // The first broker's runtime file (kill "$(jq .pid data/broker.runtime.json)") is still its own.
      t.is(await runtimePid(data), first.child.pid!);
      const json = await runBrokerBounded(['--data', data, '--json']);
      t.is(json.code, 1);
      t.is((JSON.parse(json.stderr) as { error: { code: string } }).error.code, 'DATA_DIR_LOCKED');
    } finally {
      t.is(await first.stop('SIGTERM'), 0);
    }
    // A clean exit releases the lock and removes its runtime file.
    await t.throwsAsync(stat(join(data, 'broker.lock')));
    await t.throwsAsync(stat(join(data, 'broker.runtime.json')));
  });
});

test('ok/a lock left by a broker that died is taken over, and the log says so', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    t.is((await runCli(['init', '--data', data, ...INIT])).code, 0);
    const crashed = await spawnBroker(['--data', data, '--log-level', 'warn']);
    t.is(await crashed.stop('SIGKILL'), null);
    t.is(JSON.parse(await readFile(join(data, 'broker.lock'), 'utf8')).pid, crashed.child.pid, 'a killed broker leaves its lock');
    const next = await spawnBroker(['--data', data, '--log-level', 'warn']);
    try {
      t.is(await runtimePid(data), next.child.pid!);
      t.regex(next.stdout() + next.stderr(), new RegExp(`stale lock.*pid ${crashed.child.pid}\\b|"stalePid":${crashed.child.pid}`));
    } finally {
      t.is(await next.stop('SIGTERM'), 0);
    }
  });
});
