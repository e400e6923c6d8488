/**
 * scripts/systemd/certunnel-broker.service and its OpenSSH-mode drop-in:
 * systemd itself (systemd-analyze verify) finds nothing to complain about,
 * the sandbox is there, the broker's defaults fit inside it (no port below
 * 1024, so no capability), and the drop-in grants what OpenSSH mode needs
 * (signalling and reading sshd's per-connection processes, a searchable
 * data directory) and nothing else.
 */
import test from 'ava';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig, splitHostPort } from '../../broker/core/config.js';
import { withBroker } from '../../testkit/broker.js';
import { REPO_ROOT } from '../../testkit/cli.js';
import { hasSystemdAnalyze, unitDirectives, verifyUnit } from '../../testkit/systemd-unit.js';

const DIR = join(REPO_ROOT, 'scripts', 'systemd');
const UNIT = join(DIR, 'certunnel-broker.service');
const OPENSSH_DROPIN = join(DIR, 'certunnel-broker.service.d', 'openssh-mode.conf');

test('the unit restarts on failure, runs as its own user from its data directory, and is sandboxed', async (t) => {
  const d = unitDirectives(await readFile(UNIT, 'utf8'));
  const one = (key: string): string | undefined => d.get(key)?.[0];
  t.is(one('Restart'), 'on-failure');
  const dataDir = /^\S+\/certunnel broker --data (\S+)$/.exec(one('ExecStart') ?? '')?.[1];
  t.is(dataDir, '/var/lib/certunnel', one('ExecStart'));
  // The data directory is the state directory, the only writable path, and private.
  t.is(`/var/lib/${one('StateDirectory') ?? ''}`, dataDir ?? '');
  t.is(one('StateDirectoryMode'), '0700');
  t.deepEqual(d.get('ReadWritePaths'), [dataDir ?? '']);
  t.is(one('User'), 'certunnel');
  t.false(/passphrase/i.test(one('ExecStart') ?? ''), 'no secret on the command line');
  const hardening: Array<[string, string]> = [
    ['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['PrivateDevices', 'yes'],
    ['ProtectKernelTunables', 'yes'], ['ProtectKernelModules', 'yes'], ['ProtectControlGroups', 'yes'], ['ProtectProc', 'invisible'],
    ['RestrictNamespaces', 'yes'], ['RestrictSUIDSGID', 'yes'], ['LockPersonality', 'yes'], ['CapabilityBoundingSet', ''], ['AmbientCapabilities', ''],
    ['SystemCallFilter', '@system-service'], ['SystemCallArchitectures', 'native'], ['UMask', '0077'],
  ];
  for (const [key, value] of hardening) t.is(one(key), value, key);
  t.deepEqual(one('RestrictAddressFamilies')?.split(' ').sort(), ['AF_INET', 'AF_INET6', 'AF_UNIX']);
  t.is(d.get('MemoryDenyWriteExecute'), undefined, "V8's JIT needs W+X pages");
  t.is(d.get('PrivateNetwork'), undefined, 'the broker serves the network');
});

test('the default listen ports need no capability (CapabilityBoundingSet= is empty)', (t) => {
  const config = parseConfig({}, '/var/lib/certunnel');
  for (const listen of [config.api.listen, config.ssh.listen]) t.true(splitHostPort(listen).port >= 1024, listen);
});

test('the OpenSSH-mode drop-in: CAP_KILL and CAP_SYS_PTRACE, sshd processes visible, a searchable data directory; nothing else loosened', async (t) => {
  const d = unitDirectives(await readFile(OPENSSH_DROPIN, 'utf8'));
  t.deepEqual([...d.keys()].sort(), ['AmbientCapabilities', 'CapabilityBoundingSet', 'ProtectProc', 'StateDirectoryMode', 'UMask']);
  t.deepEqual(d.get('CapabilityBoundingSet')?.[0]?.split(' ').sort(), ['CAP_KILL', 'CAP_SYS_PTRACE']);
  t.deepEqual(d.get('AmbientCapabilities')?.[0]?.split(' ').sort(), ['CAP_KILL', 'CAP_SYS_PTRACE']);
  t.deepEqual(d.get('ProtectProc'), ['default']);
  t.deepEqual(d.get('StateDirectoryMode'), ['0711'], 'sshd opens the principals files as the connecting user');
  t.deepEqual(d.get('UMask'), ['0022']);
  // docs/operations.md names the drop-in.
  t.regex(await readFile(join(REPO_ROOT, 'docs', 'operations.md'), 'utf8'), /certunnel-broker\.service\.d\/openssh-mode\.conf/);
});

/** The mode of the openssh/ directory a broker in OpenSSH mode makes when it runs with UMASK (octal text). */
async function opensshDirMode(umask: string): Promise<number> {
  const before = process.umask(parseInt(umask, 8));
  try {
    return await withBroker(async (b) => (await stat(join(b.dir, 'openssh'))).mode & 0o777, { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:0' } } });
  } finally {
    process.umask(before);
  }
}

test.serial("OpenSSH mode under the units' umasks: the base unit's leaves sshd's per-user process unable to search openssh/, the drop-in's does not", async (t) => {
  const base = unitDirectives(await readFile(UNIT, 'utf8')).get('UMask')?.[0] ?? '';
  const dropIn = unitDirectives(await readFile(OPENSSH_DROPIN, 'utf8')).get('UMask')?.[0] ?? '';
  t.is(await opensshDirMode(base), 0o700, 'the reason for the drop-in (the check can fail)');
  t.is(await opensshDirMode(dropIn), 0o755);
});

test('systemd-analyze verify accepts the unit, alone and with the OpenSSH-mode drop-in, without a warning', async (t) => {
  if (!(await hasSystemdAnalyze())) {
    t.log('systemd-analyze is not installed; skipped');
    t.pass();
    return;
  }
  const unit = { name: 'certunnel-broker.service', text: await readFile(UNIT, 'utf8') };
  const dropIn = await readFile(OPENSSH_DROPIN, 'utf8');
  const alone = await verifyUnit(unit);
  t.is(alone.code, 0, alone.stderr);
  t.is(alone.stderr.trim(), '', 'no ignored or unknown directive');
  const withDropIn = await verifyUnit(unit, { 'openssh-mode.conf': dropIn });
  t.is(withDropIn.code, 0, withDropIn.stderr);
  t.is(withDropIn.stderr.trim(), '');
  // And it does complain about bad ones, in the unit and in the drop-in (the checks can fail).
  t.regex((await verifyUnit({ ...unit, text: unit.text.replace('Restart=on-failure', 'Restart=sometimes') })).stderr, /restart specifier/);
  t.regex((await verifyUnit(unit, { 'openssh-mode.conf': dropIn.replace('ProtectProc=default', 'ProtectProc=sometimes') })).stderr, /openssh-mode\.conf:\d+: Failed to parse \/proc\/ protection mode/);
});
