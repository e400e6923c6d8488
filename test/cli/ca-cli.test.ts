import test from 'ava';
import { join } from 'node:path';
import { runCli } from '../../testkit/cli.js';
import { makeOpensshKey, runCommand, withTempDir } from '../../testkit/openssh.js';

test('ok/certunnel ca init, sign-device, inspect, krl — with ssh-keygen as the referee', async (t) => {
  await withTempDir(async (dir) => {
    const ca = join(dir, 'ca');
    t.is((await runCli(['ca', 'init', '--dir', ca])).code, 0);
    const again = await runCli(['ca', 'init', '--dir', ca]);
    t.is(again.code, 1);
    t.regex(again.stderr, /CA_EXISTS/);

    const device = await makeOpensshKey(dir, 'device');
    const certs: string[] = [];
    for (const serial of ['5', '6', '9']) {
      const out = join(dir, `device-${serial}-cert.pub`);
      const signed = await runCli(['ca', 'sign-device', '--ca', join(ca, 'user_ca'), '--key', `${device.path}.pub`, '--device-id', `dev_${serial}`, '--ports', '20000-20001', '--serial', serial, '--validity', '30m', '--out', out]);
      t.is(signed.code, 0, signed.stderr);
      certs.push(out);
    }
    const listed = await runCommand('ssh-keygen', ['-L', '-f', certs[0]!]);
    t.regex(listed.stdout, /Key ID: "device:dev_5"/);

    const inspect = await runCli(['ca', 'inspect', certs[0]!, '--ca', join(ca, 'user_ca.pub')]);
    t.is(inspect.code, 0);
    t.regex(inspect.stdout, /Verification: OK/);
    const wrongCa = await runCli(['ca', 'inspect', certs[0]!, '--ca', join(ca, 'host_ca.pub')]);
    t.is(wrongCa.code, 3);
    t.regex(wrongCa.stdout, /Verification: FAILED CERT_UNKNOWN_CA/);

    const krl = join(dir, 'revoked.krl');
    const written = await runCli(['ca', 'krl', '--ca', join(ca, 'user_ca.pub'), '--out', krl, '--serial-range', '5-5', '--key-id', 'device:dev_9']);
    t.is(written.code, 0, written.stderr);
    const verdicts = await Promise.all(certs.map((c) => runCommand('ssh-keygen', ['-Q', '-f', krl, c])));
    t.deepEqual(verdicts.map((v) => v.code), [1, 0, 1]); // serial 5 and key id dev_9 revoked, serial 6 not
    const bad = await runCli(['ca', 'krl', '--ca', join(ca, 'user_ca.pub'), '--out', krl, '--serial-range', '9-5']);
    t.regex(bad.stderr, /BAD_ARGUMENT/);
  });
});
