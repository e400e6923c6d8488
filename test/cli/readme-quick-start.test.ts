/**
 * The README's quick start, as a newcomer types it: `npm install && npm start
 * -- <options>`. npm appends the options after `--` to the "start" script,
 * so this runs that script's `certunnel start --data DIR` with the README's
 * options (on ephemeral ports instead of 8443/2222: the machine is shared)
 * and checks the broker listens on loopback only and says what to do next.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { apiRequest, type CaResponse } from '../../api/index.js';
import { cliArgs, REPO_ROOT } from '../../testkit/cli.js';
import { withTempDir } from '../../testkit/openssh.js';

/** The first command of the README's "Quick start" code block. */
async function quickStartCommand(): Promise<string> {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Quick start'));
  const block = /```sh\n([^\n]+)\n```/.exec(section);
  if (!block) throw new Error('no sh block under "## Quick start"');
  return block[1]!;
}

test('ok/README quick start: npm start passes its options to `certunnel start`, which listens on loopback and says what next', async (t) => {
  const command = await quickStartCommand();
  const m = /^npm install && npm start -- (.+)$/.exec(command);
  t.truthy(m, command);
  const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  // npm appends the arguments after `--` to the script: they land on `certunnel start`.
  t.regex(pkg.scripts.start!, /node dist\/cli\/main\.js start --data \.\/data$/);
  const options = m![1]!.split(/\s+/);
  t.deepEqual(options.filter((o) => o.startsWith('--')), ['--api-listen', '--ssh-listen']);
  const listens = options.filter((o) => !o.startsWith('--'));
  for (const l of listens) t.regex(l, /^127\.0\.0\.1:\d+$/);

  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    const args = options.map((o) => o.replace(/^127\.0\.0\.1:\d+$/, '127.0.0.1:0'));
    const child = spawn(process.execPath, cliArgs(['start', '--data', data, ...args, '--log-level', 'warn']), { cwd: REPO_ROOT });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    try {
      const deadline = Date.now() + 60_000;
      while (!out.includes('{"ready":true') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 200));
      const ready = JSON.parse(out.split('\n').find((l) => l.startsWith('{"ready":true'))!) as { apiUrl: string; sshPort: number };
      t.regex(ready.apiUrl, /^https:\/\/127\.0\.0\.1:\d+$/);
      t.regex(out, /Admin API key \(shown once/);
      t.regex(out, /Next: /);
      const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
      const ca = await apiRequest<CaResponse>({ baseUrl: ready.apiUrl, pin }, 'GET', '/v1/ca');
      // Devices are told the loopback address the gateway listens on, not the default domain.
      t.deepEqual([ca.ssh.host, ca.ssh.port], ['127.0.0.1', ready.sshPort]);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
