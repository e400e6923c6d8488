/**
 * broker/openssh/sshd-reload.ts: the operator's reload command, SIGHUP
 * through a pid file only after `sshd -t` passes, and the refusals, each
 * with a reason that names what failed (no root needed: a child process
 * stands in for sshd's listener).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { reloadSshd, SshdReloadError } from '../../../broker/openssh/sshd-reload.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { waitFor } from '../../../testkit/ssh-client.js';

test('ok/ssh.sshdReloadCommand runs; a non-zero exit is a failed reload naming the code', async (t) => {
  await withTempDir(async (dir) => {
    const marker = join(dir, 'reloaded');
    await reloadSshd({ command: `touch ${marker}` });
    t.true(existsSync(marker));
    const err = await t.throwsAsync(reloadSshd({ command: 'echo "sshd.service not loaded" >&2; exit 5' }), { instanceOf: SshdReloadError });
    t.regex(err!.message, /exited 5: sshd\.service not loaded/);
  });
});

test('ok/ssh.sshdPidFile: SIGHUP once sshd -t passes; fail/no SIGHUP when it does not, or without a pid', async (t) => {
  await withTempDir(async (dir) => {
    const listener = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const pidFile = join(dir, 'sshd.pid');
      await writeFile(pidFile, `${listener.pid}\n`);
      const refused = await t.throwsAsync(reloadSshd({ pidFile, sshdPath: '/bin/false', sshdConfig: '/etc/ssh/sshd_config' }), { instanceOf: SshdReloadError });
      t.regex(refused!.message, /sshd -t -f \/etc\/ssh\/sshd_config refused/);
      t.is(listener.signalCode, null, 'not signalled');
      for (const [content, reason] of [['', /holds no pid/], ['1\n', /holds no pid/], ['12ab\n', /holds no pid/]] as const) {
        await writeFile(pidFile, content);
        const err = await t.throwsAsync(reloadSshd({ pidFile, sshdPath: '/bin/true', sshdConfig: '/dev/null' }), { instanceOf: SshdReloadError });
        t.regex(err!.message, reason);
      }
      const missing = await t.throwsAsync(reloadSshd({ pidFile: join(dir, 'none.pid'), sshdPath: '/bin/true', sshdConfig: '/dev/null' }), { instanceOf: SshdReloadError });
      t.regex(missing!.message, /cannot read ssh\.sshdPidFile .*ENOENT/);
      await writeFile(pidFile, `${listener.pid}\n`);
      await reloadSshd({ pidFile, sshdPath: '/bin/true', sshdConfig: '/dev/null' });
      await waitFor(() => listener.signalCode === 'SIGHUP', 'the SIGHUP');
      t.is(listener.signalCode, 'SIGHUP');
    } finally {
      listener.kill('SIGKILL');
    }
  });
});
