/**
 * OpenSSH mode with a real sshd as the referee: the rendered files and the
 * session killer. The conformance table against sshd configured only by
 * broker/openssh is in test/broker/conformance.test.ts. The sshd tests need
 * Linux and root (sshd switches to the tunnel/operator users, which they
 * create if missing).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeKrl, formatCertificate, generateKeyPair, saveKeyPair, signHostCert } from '../../../ca/index.js';
import { isBrokerError } from '../../../broker/core/errors.js';
import { OPENSSH_FILES, renderOpensshFiles, renderPrincipals, writeOpensshFiles, type OpensshModeInput } from '../../../broker/openssh/config-files.js';
import { checkSshdConfig, DEFAULT_SSHD, effectiveSshdConfig } from '../../../testkit/sshd-check.js';
import { findListenerPids, killSessionsHoldingPorts } from '../../../broker/openssh/session-killer.js';
import { withTempDir } from '../../../testkit/openssh.js';
import { openReverseTunnel, roundTrip, sleep, startEchoServer } from '../../../testkit/conformance/client.js';
import { sshdDriver, type SshdGateway } from '../../../testkit/conformance/sshd-driver.js';
import { createWorld, issueDevice, type World } from '../../../testkit/conformance/world.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;

function sampleInput(outDir: string, hostKeyPath: string, pool = { first: 20000, last: 20005, perDevice: 2 }): OpensshModeInput {
  const hostCa = generateKeyPair();
  const host = generateKeyPair();
  const cert = signHostCert({ hostCa, publicKey: host.publicKey, hostnames: ['broker.example'], serial: 1n, now: new Date() });
  const userCa = generateKeyPair();
  return {
    outDir,
    userCaKeys: [userCa.publicKey],
    hostKeyPath,
    hostCertificate: formatCertificate(cert),
    krl: encodeKrl({ caKey: userCa.publicKey, version: 1n, generatedAt: new Date() }),
    pool,
    deviceUser: 'tunnel',
    operatorUser: 'operator',
  };
}

// --- rendering -------------------------------------------------------------

test('ok/principals lines name exactly each block of the pool', (t) => {
  t.is(
    renderPrincipals({ first: 20000, last: 20005, perDevice: 2 }, 'devices'),
    'restrict,port-forwarding,permitlisten="127.0.0.1:20000",permitlisten="127.0.0.1:20001" ports-20000-20001\n' +
      'restrict,port-forwarding,permitlisten="127.0.0.1:20002",permitlisten="127.0.0.1:20003" ports-20002-20003\n' +
      'restrict,port-forwarding,permitlisten="127.0.0.1:20004",permitlisten="127.0.0.1:20005" ports-20004-20005\n',
  );
  // A trailing partial block is never allocated, so it gets no line.
  t.is(
    renderPrincipals({ first: 30000, last: 30004, perDevice: 2 }, 'operators'),
    'restrict,port-forwarding,permitopen="127.0.0.1:30000",permitopen="127.0.0.1:30001" reach-30000-30001\n' +
      'restrict,port-forwarding,permitopen="127.0.0.1:30002",permitopen="127.0.0.1:30003" reach-30002-30003\n',
  );
});

test('ok/a pool of 10,000 ports renders 5,000 lines per user', (t) => {
  const startedAt = process.hrtime.bigint();
  const files = renderOpensshFiles(sampleInput('/srv/certunnel/openssh', '/srv/certunnel/host_key', { first: 20000, last: 29999, perDevice: 2 }));
  const ms = Number(process.hrtime.bigint() - startedAt) / 1e6;
  const devices = String(files.get(OPENSSH_FILES.devicePrincipals)!.content).trimEnd().split('\n');
  const operators = String(files.get(OPENSSH_FILES.operatorPrincipals)!.content).trimEnd().split('\n');
  t.is(devices.length, 5000);
  t.is(operators.length, 5000);
  t.regex(devices.at(-1)!, /permitlisten="127\.0\.0\.1:29999" ports-29998-29999$/);
  t.regex(operators.at(-1)!, /permitopen="127\.0\.0\.1:29999" reach-29998-29999$/);
  t.log(`rendered in ${ms.toFixed(1)} ms`);
});

test('ok/files, modes and order: everything the config references comes before it', (t) => {
  const files = renderOpensshFiles(sampleInput('/srv/certunnel/openssh', '/srv/certunnel/host_key'));
  t.deepEqual([...files.keys()], ['revoked.krl', 'user_ca.pub', 'host_key-cert.pub', 'principals.devices', 'principals.operators', 'sshd_config.certunnel']);
  // Only the principals files are read by sshd as another user (the connecting one).
  for (const [name, file] of files) t.is(file.mode, name.startsWith('principals.') ? 0o644 : 0o600, name);
  const config = String(files.get(OPENSSH_FILES.config)!.content);
  // Global keywords before the first Match, each user's lockdown after it.
  const firstMatch = config.indexOf('\nMatch ');
  t.true(config.indexOf('\nHostKey /srv/certunnel/host_key\n') < firstMatch);
  t.true(config.indexOf('\nHostCertificate /srv/certunnel/openssh/host_key-cert.pub\n') < firstMatch);
  t.regex(config, /Match User tunnel\n( {4}.*\n)* {4}AllowTcpForwarding remote\n/);
  t.regex(config, /Match User operator\n( {4}.*\n)* {4}AllowTcpForwarding local\n/);
  t.is(config.match(/RevokedKeys \/srv\/certunnel\/openssh\/revoked\.krl/g)?.length, 2);
});

test('ok/TrustedUserCAKeys lists every accepted user CA; the host certificate goes where hostCertificateFile says', (t) => {
  const good = sampleInput('/srv/certunnel/openssh', '/srv/certunnel/openssh/host_key-0123456789abcdef-0123456789abcdef');
  const next = generateKeyPair().publicKey;
  const files = renderOpensshFiles({ ...good, userCaKeys: [...good.userCaKeys, next], hostCertificateFile: 'host_key-0123456789abcdef-0123456789abcdef-cert.pub' });
  t.is(String(files.get(OPENSSH_FILES.userCa)!.content).trimEnd().split('\n').length, 2);
  t.true(files.has('host_key-0123456789abcdef-0123456789abcdef-cert.pub'));
  t.false(files.has(OPENSSH_FILES.hostCertificate));
  t.regex(String(files.get(OPENSSH_FILES.config)!.content), /\nHostCertificate \/srv\/certunnel\/openssh\/host_key-0123456789abcdef-0123456789abcdef-cert\.pub\n/);
});

test('fail/unsafe input is refused with CONFIG_INVALID', (t) => {
  const good = sampleInput('/srv/certunnel/openssh', '/srv/certunnel/host_key');
  const bad: Array<[string, Partial<OpensshModeInput>]> = [
    ['relative dir', { outDir: 'openssh' }],
    ['space in dir', { outDir: '/srv/cert tunnel' }],
    ['%-token in dir', { outDir: '/srv/%u' }],
    ['quote in host key path', { hostKeyPath: '/srv/"k' }],
    ['host certificate file outside the directory', { hostCertificateFile: '../host_key-cert.pub' }],
    ['host certificate file of another name', { hostCertificateFile: 'sshd_config.certunnel' }],
    ['no user CA', { userCaKeys: [] }],
    ['five user CAs', { userCaKeys: Array.from({ length: 5 }, () => generateKeyPair().publicKey) }],
    ['empty pool', { pool: { first: 20000, last: 20000, perDevice: 2 } }],
    ['zero block size', { pool: { first: 20000, last: 20010, perDevice: 0 } }],
    ['pattern as user', { deviceUser: 'tun*' }],
    ['same users', { operatorUser: 'tunnel' }],
    ['not a host certificate', { hostCertificate: 'ssh-ed25519 AAAA' }],
    ['two lines as host certificate', { hostCertificate: `${good.hostCertificate}\nMatch all` }],
    ['startups not start:rate:full', { startups: { maxStartups: '10:30', perSource: 3, loginGraceSeconds: 15 } }],
    ['startups with a line break', { startups: { maxStartups: '10:30:100\nMatch all', perSource: 3, loginGraceSeconds: 15 } }],
    ['zero login grace (sshd: no limit)', { startups: { maxStartups: '10:30:100', perSource: 3, loginGraceSeconds: 0 } }],
  ];
  for (const [name, change] of bad) {
    const err = t.throws(() => renderOpensshFiles({ ...good, ...change }), undefined, name);
    t.true(isBrokerError(err, 'CONFIG_INVALID'), name);
  }
});

// --- sshd accepts what we write ---------------------------------------------

sshdTest('ok/sshd -t accepts the generated file; the Match blocks apply to their users only', async (t) => {
  await withTempDir(async (dir) => {
    const hostKeyPath = join(dir, 'host_key');
    await saveKeyPair(hostKeyPath, generateKeyPair());
    const input = sampleInput(join(dir, 'openssh'), hostKeyPath, { first: 20000, last: 29999, perDevice: 2 });
    const written = await writeOpensshFiles(input);
    t.is(written.length, 6);
    for (const path of written) t.is((await stat(path)).mode & 0o777, path.includes('/principals.') ? 0o644 : 0o600, path);
    t.deepEqual(await readFile(join(dir, 'openssh', OPENSSH_FILES.krl)), input.krl);
    const config = join(dir, 'openssh', OPENSSH_FILES.config);
    const check = await checkSshdConfig(config);
    t.true(check.ok, check.output);

    const device = await effectiveSshdConfig(config, { user: 'tunnel' });
    // sshd's own limits on connections not yet authenticated, as the embedded gateway's.
    t.deepEqual(device.get('maxstartups'), ['128:30:512']);
    t.deepEqual(device.get('persourcemaxstartups'), ['32']);
    t.deepEqual(device.get('persourcenetblocksize'), ['32:64']);
    t.deepEqual(device.get('logingracetime'), ['15']);
    t.deepEqual(device.get('allowtcpforwarding'), ['remote']);
    t.deepEqual(device.get('maxsessions'), ['0']);
    t.deepEqual(device.get('permittty'), ['no']);
    t.deepEqual(device.get('authorizedprincipalsfile'), [join(dir, 'openssh', 'principals.devices')]);
    const operator = await effectiveSshdConfig(config, { user: 'operator' });
    t.deepEqual(operator.get('allowtcpforwarding'), ['local']);
    t.deepEqual(operator.get('authorizedprincipalsfile'), [join(dir, 'openssh', 'principals.operators')]);
    // Everyone else keeps sshd's defaults.
    const other = await effectiveSshdConfig(config, { user: 'root' });
    t.deepEqual(other.get('allowtcpforwarding'), ['yes']);
    t.not(other.get('maxsessions')?.[0], '0');
  });
});

sshdTest('fail/sshd -t refuses the generated file when its host key is missing', async (t) => {
  await withTempDir(async (dir) => {
    const hostKeyPath = join(dir, 'host_key');
    await saveKeyPair(hostKeyPath, generateKeyPair());
    await writeOpensshFiles(sampleInput(join(dir, 'openssh'), hostKeyPath));
    // The negative control for the test above: sshd -t really looks at the files.
    await rm(hostKeyPath);
    const check = await checkSshdConfig(join(dir, 'openssh', OPENSSH_FILES.config));
    t.false(check.ok);
  });
});

// --- session killer on local processes ---------------------------------------

test('ok/findListenerPids finds this process listening on 127.0.0.1 and ::1, and nothing on a closed port', async (t) => {
  const v4 = createServer();
  const v6 = createServer();
  await new Promise<void>((resolve) => v4.listen(0, '127.0.0.1', resolve));
  const port = (v4.address() as { port: number }).port;
  const v6ok = await new Promise<boolean>((resolve) => {
    v6.once('error', () => resolve(false));
    v6.listen(port, '::1', () => resolve(true));
  });
  try {
    t.deepEqual(findListenerPids([port]), [process.pid]);
    if (!v6ok) t.log('no IPv6 loopback here; tcp6 not exercised');
  } finally {
    v4.close();
    if (v6ok) v6.close();
  }
  await sleep(50);
  t.deepEqual(findListenerPids([port]), []);
});

test('fail/killSessionsHoldingPorts never signals a process that is not sshd', async (t) => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    t.deepEqual(findListenerPids([port]), [process.pid]);
    t.deepEqual(killSessionsHoldingPorts([port], { signal: 'SIGCONT' }), []);
    t.deepEqual(killSessionsHoldingPorts([port], { signal: 'SIGCONT', commands: ['node', 'MainThread'] }), []); // never ourselves
  } finally {
    server.close();
  }
  t.throws(() => findListenerPids([0]), { instanceOf: RangeError });
});

// --- real sshd: the session killer -------------------------------------------
// The conformance table (cases.ts) runs against this sshd setup and the
// embedded gateway together in test/broker/conformance.test.ts; here only
// what it does not look at: which process the killer picks.

interface Fixture {
  dir: string;
  world: World;
  gateway: SshdGateway;
  echo: { port: number; close(): Promise<void> };
}

let fixture: Fixture | undefined;

test.before(async () => {
  if (!CAN_RUN_SSHD) return;
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-openssh-'));
  const world = await createWorld(dir, { blocks: 4 });
  const echo = await startEchoServer();
  const gateway = await sshdDriver().start(world);
  fixture = { dir, world, gateway, echo };
});

test.after.always(async () => {
  if (!fixture) return;
  await fixture.gateway.stop();
  await fixture.echo.close();
  await rm(fixture.dir, { recursive: true, force: true });
});

/** Parent pid and real uid of PID, from /proc/<pid>/status. */
async function processInfo(pid: number): Promise<{ ppid: number; uid: number; cmdline: string }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ').trim();
  return { ppid: Number(/^PPid:\s+(\d+)/m.exec(status)![1]), uid: Number(/^Uid:\s+(\d+)/m.exec(status)![1]), cmdline };
}

sshdTest('ok/the session killer ends the per-session child that holds the port, not the sshd master', async (t) => {
  const { world, gateway, echo } = fixture!;
  const identity = await issueDevice(world, await world.nextBlock());
  const port = identity.block.first;
  const tunnel = await openReverseTunnel(gateway.target, identity, gateway.deviceUser, [{ bind: '127.0.0.1', port }], echo.port);
  try {
    t.is(tunnel.observation.verdict, 'ok', tunnel.observation.detail);
    const pids = findListenerPids([port]);
    t.is(pids.length, 1);
    const holder = await processInfo(pids[0]!);
    const monitor = await processInfo(holder.ppid);
    const tunnelUid = Number((await readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith(`${gateway.deviceUser}:`))!.split(':')[2]);
    t.not(pids[0], gateway.masterPid);
    t.is(holder.uid, tunnelUid, 'the listener belongs to the unprivileged child');
    t.regex(monitor.cmdline, /\[priv\]/);
    t.is(monitor.ppid, gateway.masterPid);
    t.log(`holder ${pids[0]} "${holder.cmdline}" <- monitor ${holder.ppid} "${monitor.cmdline}" <- master ${gateway.masterPid}`);

    t.deepEqual(killSessionsHoldingPorts([port]), pids);
    for (let i = 0; i < 100 && !tunnel.exited(); i++) await sleep(20);
    t.true(tunnel.exited(), 'the device client saw its connection end');
    t.deepEqual(findListenerPids([port]), []);
    process.kill(gateway.masterPid, 0); // still there
    const again = await openReverseTunnel(gateway.target, identity, gateway.deviceUser, [{ bind: '127.0.0.1', port }], echo.port);
    try {
      t.is(again.observation.verdict, 'ok', 'the master still serves (and this device was never revoked)');
      t.is((await roundTrip(port, Buffer.from('back'))).toString(), 'back');
    } finally {
      await again.close();
    }
  } finally {
    await tunnel.close();
  }
});
