/**
 * `certunnel ssh DEVICE -- …` and `certunnel ssh-config` end to end: a real
 * broker (embedded gateway), a device kept connected by a real `ssh -R`
 * holding its ssh slot to a real sshd (standing in for the device's sshd),
 * the CLI as a child process running the system `ssh`. Needs root (sshd).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeyPair } from '../../ca/index.js';
import type { AuditEventView, ListAuditResponse } from '../../api/index.js';
import { runCli } from '../../testkit/cli.js';
import { staticTrustRoots, type TrustRoots } from '../../broker/core/trust-roots.js';
import { runCommand } from '../../testkit/openssh.js';
import { withFleet, type Fleet } from '../../testkit/operator-fixture.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync('/usr/sbin/sshd');
const sshdTest = CAN_RUN_SSHD ? test : test.skip;

interface Operator {
  readonly env: NodeJS.ProcessEnv;
  readonly api: string[];
  /** ssh options for the device's own sshd: the login key, its host keys under the device names. */
  readonly login: string[];
}

async function operatorOf(f: Fleet): Promise<Operator> {
  const key = await f.b.apiKey('operator');
  return {
    env: { CERTUNNEL_API_KEY: key.apiKey!, CERTUNNEL_HOME: join(f.b.dir, 'operator-home') },
    api: ['--api', f.b.broker.apiUrl, '--pin', f.b.init.apiPin],
    login: ['-F', '/dev/null', '-i', f.login.keyPath, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${f.login.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-l', 'root'],
  };
}

async function audits(f: Fleet, action: string): Promise<AuditEventView[]> {
  return (await f.b.call<ListAuditResponse>(f.b.admin, 'GET', `/v1/audit?limit=1000&action=${action}`)).items;
}

sshdTest('ok/certunnel ssh runs a command on the device sshd through the broker; key made once (0600); audited', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-s', { connect: true, sshd: true });
    const op = await operatorOf(f);
    const run = await runCli(['ssh', 'kiosk-s', ...op.api, '--', ...op.login, 'echo', 'hello from $(hostname -s) as $(id -un)'], op.env);
    t.is(run.code, 0, run.stderr);
    t.regex(run.stdout, /^hello from \S+ as root\n$/);
    t.regex(run.stderr, /made an operator key/);
    const keyPath = join(op.env.CERTUNNEL_HOME!, 'operator_ed25519');
    t.is((await stat(keyPath)).mode & 0o777, 0o600);
    const pub = (await readFile(`${keyPath}.pub`, 'utf8')).trim();

    // The remote command's exit status comes back; the key is reused, not made again.
    const again = await runCli(['ssh', 'kiosk-s', ...op.api, '--', ...op.login, 'exit', '3'], op.env);
    t.is(again.code, 3, again.stderr);
    t.notRegex(again.stderr, /made an operator key/);
    t.is((await readFile(`${keyPath}.pub`, 'utf8')).trim(), pub);

    const issued = (await audits(f, 'operator.certificate')).filter((e) => e.outcome === 'ok');
    t.is(issued.length, 2);
    t.true(issued.every((e) => e.target === dev.grant.deviceId && e.details.fingerprint !== undefined));
    const reached = await audits(f, 'ssh.reach');
    t.is(reached.length, 2);
    t.like(reached[0], { target: dev.grant.deviceId, actor: 'operator:test-operator' });
    t.is(reached[0]!.details.port, dev.grant.ports.first);
    t.deepEqual(new Set(reached.map((e) => e.details.serial)), new Set(issued.map((e) => e.details.serial)));
  }));

sshdTest('ok/ssh-config: plain `ssh kiosk-s` goes through the broker', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-s', { connect: true, sshd: true });
    await f.enroll('kiosk-t');
    const op = await operatorOf(f);
    const snippet = await runCli(['ssh-config', ...op.api], op.env);
    t.is(snippet.code, 0, snippet.stderr);
    t.regex(snippet.stdout, /^Host kiosk-s kiosk-t$/m);
    t.regex(snippet.stdout, /^ {4}ProxyCommand .* ssh-proxy --api \S+ --pin \S+ %n$/m);
    t.notRegex(snippet.stdout, /ctk_/, 'never the API key');
    const config = join(f.b.dir, 'ssh_config');
    await writeFile(config, snippet.stdout);
    const login = op.login.filter((_a, i) => i > 1); // all but -F /dev/null
    const ssh = await runCommand('ssh', ['-F', config, ...login, 'kiosk-s', 'echo', 'plain ssh works'], { env: op.env });
    t.is(ssh.code, 0, ssh.stderr);
    t.is(ssh.stdout, 'plain ssh works\n');
  }));

sshdTest('fail/unknown, revoked and offline devices: clear codes before any ssh runs', (t) =>
  withFleet(async (f) => {
    const op = await operatorOf(f);
    const unknown = await runCli(['ssh', 'kiosk-none', ...op.api, '--', ...op.login, 'true'], op.env);
    t.is(unknown.code, 1);
    t.regex(unknown.stderr, /^certunnel: DEVICE_UNKNOWN: no device named \(or with id\) "kiosk-none"$/m);

    const gone = await f.enroll('kiosk-gone', { connect: true, sshd: true });
    await f.b.call(f.b.admin, 'POST', '/v1/devices/kiosk-gone/revoke', { reason: 'test' });
    const revoked = await runCli(['ssh', 'kiosk-gone', ...op.api, '--', ...op.login, 'true'], op.env);
    t.is(revoked.code, 1);
    t.regex(revoked.stderr, /^certunnel: DEVICE_REVOKED: device kiosk-gone has been revoked$/m);
    t.is(gone.sshd!.output().match(/Accepted publickey/g), null);

    const idle = await f.enroll('kiosk-idle', { sshd: true });
    await f.connect(idle);
    await f.disconnect(idle);
    const offline = await runCli(['ssh', 'kiosk-idle', ...op.api, '--', ...op.login, 'true'], op.env);
    t.is(offline.code, 1);
    t.regex(offline.stderr, /^certunnel: DEVICE_OFFLINE: device kiosk-idle is offline since \d{4}-\d\d-\d\dT[\d:.]+Z$/m);
  }));

sshdTest('fail/a certificate for device A used to reach device B is refused by the broker', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-a', { connect: true, sshd: true });
    const b = await f.enroll('kiosk-b', { connect: true, sshd: true });
    const op = await operatorOf(f);
    // The certificate is for kiosk-a's block; --port names kiosk-b's ssh slot.
    const run = await runCli(['ssh', 'kiosk-a', '--port', String(b.grant.ports.first), ...op.api, '--', ...op.login, 'echo', 'should not run'], op.env);
    t.is(run.code, 255);
    t.is(run.stdout, '');
    t.regex(run.stderr, new RegExp(`certunnel: REACH_REFUSED: the broker refused port ${b.grant.ports.first}: the certificate for kiosk-a reaches its block \\d+-\\d+ only`));
    t.true((await audits(f, 'ssh.channel')).some((e) => e.details.reason === 'PORT_NOT_OWNED' && e.target === `127.0.0.1:${b.grant.ports.first}`));
    t.is(b.sshd!.output().match(/Connection from/g), null, "kiosk-b's sshd saw no connection");
  }));

sshdTest('fail/an expired operator certificate is refused at the broker with a clear message', (t) =>
  withFleet(async (f) => {
    await f.enroll('kiosk-s', { connect: true, sshd: true });
    const op = await operatorOf(f);
    // The API signs with a clock 11 minutes behind the gateway's: the certificate is expired on arrival.
    const apiClock = f.b.broker.core.clock;
    (f.b.broker.core as { clock: () => Date }).clock = () => new Date(Date.now() - 11 * 60_000);
    try {
      const run = await runCli(['ssh', 'kiosk-s', ...op.api, '--', ...op.login, 'echo', 'should not run'], op.env);
      t.is(run.code, 255);
      t.is(run.stdout, '');
      t.regex(run.stderr, /certunnel: CERTIFICATE_REFUSED: the broker refused the operator certificate: it expired at \S+Z/);
      t.regex(run.stderr, /warning: the certificate is valid .* check the clocks/);
    } finally {
      (f.b.broker.core as { clock: () => Date }).clock = apiClock;
    }
    t.true((await audits(f, 'ssh.auth')).some((e) => e.details.reason === 'CERT_EXPIRED'));
  }));

sshdTest('fail/a broker SSH server with another host key is never trusted', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-s', { connect: true, sshd: true });
    const op = await operatorOf(f);
    // The API vouches for a host key and a host CA the SSH server has neither of (as if someone sat in between).
    // (The host key alone would not do: the gateway presents its host certificate, which the host CA vouches for.)
    const core = f.b.broker.core as { trustRoots: TrustRoots };
    const genuine = core.trustRoots;
    core.trustRoots = staticTrustRoots({ ...genuine.current(), hostKey: generateKeyPair(), hostCa: generateKeyPair().publicKey });
    try {
      const run = await runCli(['ssh', 'kiosk-s', ...op.api, '--', ...op.login, 'echo', 'should not run'], op.env);
      t.is(run.code, 255);
      t.regex(run.stderr, /certunnel: BROKER_HOST_KEY_MISMATCH: /);
    } finally {
      core.trustRoots = genuine;
    }
    t.is(dev.sshd!.output().match(/Accepted publickey/g), null);
  }));
