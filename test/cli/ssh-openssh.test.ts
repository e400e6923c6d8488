/**
 * `certunnel ssh` against a broker in OpenSSH mode: a real system sshd
 * configured only by the broker's generated files (user "operator",
 * principals.operators with permitopen for each block, the host certificate),
 * the device's tunnel held by sshd, and the device's own sshd behind it.
 * Needs root (sshd switches to the tunnel and operator users, created if missing).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from '../../testkit/cli.js';
import { opensshFleetOptions, withFleet } from '../../testkit/operator-fixture.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/sbin/sshd');
const sshdTest = CAN_RUN_SSHD ? test : test.skip;

sshdTest('ok/OpenSSH mode: certunnel ssh goes through sshd as "operator"; another device\'s port is refused by permitopen', async (t) => {
  await withFleet(
    async (f) => {
      await f.enroll('kiosk-a', { connect: true, sshd: true });
      const b = await f.enroll('kiosk-b', { connect: true, sshd: true });
      const key = await f.b.apiKey('operator');
      const env = { CERTUNNEL_API_KEY: key.apiKey!, CERTUNNEL_HOME: join(f.b.dir, 'operator-home') };
      const api = ['--api', f.b.broker.apiUrl, '--pin', f.b.init.apiPin];
      const login = ['-F', '/dev/null', '-i', f.login.keyPath, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${f.login.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-l', 'root'];

      // Not refused as offline: the broker cannot see sshd's tunnels.
      const ok = await runCli(['ssh', 'kiosk-a', ...api, '--', ...login, 'echo', 'through sshd'], env);
      t.is(ok.code, 0, ok.stderr);
      t.is(ok.stdout, 'through sshd\n');

      const other = await runCli(['ssh', 'kiosk-a', '--port', String(b.grant.ports.first), ...api, '--', ...login, 'echo', 'should not run'], env);
      t.is(other.code, 255);
      t.regex(other.stderr, /certunnel: REACH_REFUSED: the broker refused port \d+: the certificate for kiosk-a reaches its block \d+-\d+ only/);
      t.is(b.sshd!.output().match(/Accepted publickey/g), null);
    },
    await opensshFleetOptions(),
  );
});
