/** agent/state-dir.ts: layout and modes, known_hosts as ssh reads it, loading and cross-checks, the run lock. */
import test from 'ava';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { AgentError } from '../../agent/errors.js';
import { acquireRunLock, loadEnrollment, renderKnownHosts, runningAgentPid, statePaths } from '../../agent/state-dir.js';
import { sshKeygen } from '../../testkit/openssh.js';
import { enrolledDevice } from './fixtures.js';

test('ok/layout: 0700 directory, 0600 key, certificate, known_hosts and state.json; loads back consistent', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const paths = statePaths(device.dir);
    t.is((await stat(device.dir)).mode & 0o777, 0o700);
    t.is((await stat(paths.key)).mode & 0o777, 0o600);
    t.is((await stat(paths.certificate)).mode & 0o777, 0o644);
    const enrollment = await loadEnrollment(device.dir);
    t.is(enrollment?.state.deviceId, device.deviceId);
    t.deepEqual(enrollment?.state.ports, device.ports);
    t.is(enrollment?.certificate.serial.toString(), enrollment?.state.serial);
    t.true(enrollment!.key.publicKey.equals(device.key.publicKey));
    // ssh-keygen reads the certificate the agent stored.
    t.regex((await sshKeygen(['-L', '-f', paths.certificate])).stdout, /ports-20000-20001/);
  } finally {
    await device.close();
  }
});

test('ok/known_hosts: ssh-keygen -F finds the pinned key for [host]:port, and the host CA is an @cert-authority line', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const path = statePaths(device.dir).knownHosts;
    const found = await sshKeygen(['-F', '[127.0.0.1]:2222', '-f', path]);
    t.is(found.code, 0);
    t.true(found.stdout.includes(formatPublicKey(device.hostKey.publicKey).split(' ')[1]!));
    const text = await readFile(path, 'utf8');
    t.regex(text, new RegExp(`^@cert-authority \\[127\\.0\\.0\\.1\\]:2222 ${formatPublicKey(device.hostCa.publicKey).replace(/[+/]/g, '\\$&')} `, 'm'));
    t.is((await sshKeygen(['-F', '[127.0.0.1]:2223', '-f', path])).code, 1, 'no other port');
    // Port 22 is written without brackets, as ssh looks it up.
    const key = formatPublicKey(generateKeyPair().publicKey);
    t.regex(renderKnownHosts({ host: 'broker.example', port: 22, username: 'tunnel', hostKey: key, hostCertificateAuthority: key }), /^broker\.example ssh-ed25519 /);
  } finally {
    await device.close();
  }
});

test('fail/a certificate for another key, a missing key, a broken state.json are STATE_INVALID', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const paths = statePaths(device.dir);
    const other = await enrolledDevice({ now: Date.now() });
    await writeFile(paths.certificate, await readFile(statePaths(other.dir).certificate));
    await other.close();
    t.is(((await t.throwsAsync(loadEnrollment(device.dir))) as AgentError).code, 'STATE_INVALID');
    await writeFile(paths.state, '{"deviceId": 5}');
    t.is(((await t.throwsAsync(loadEnrollment(device.dir))) as AgentError).code, 'STATE_INVALID');
    t.is(await loadEnrollment(join(device.dir, 'nothing-here')), null, 'not enrolled is not an error');
  } finally {
    await device.close();
  }
});

test('ok/run lock: one agent per state directory; a dead holder is taken over', async (t) => {
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const paths = statePaths(device.dir);
    const release = await acquireRunLock(paths);
    t.is(await runningAgentPid(paths), process.pid);
    const again = await t.throwsAsync(acquireRunLock(paths, process.pid + 1));
    t.is((again as AgentError).code, 'ALREADY_RUNNING');
    await release();
    t.is(await runningAgentPid(paths), null);
    // A pid from a crashed run (no such process): taken over.
    const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim();
    await writeFile(paths.runPid, `999999999 ${boot}\n`);
    const second = await acquireRunLock(paths);
    await second();
    // A live pid from before a reboot (another boot id) means nothing either.
    await writeFile(paths.runPid, `${process.pid} 00000000-0000-0000-0000-000000000000\n`);
    t.is(await runningAgentPid(paths), boot ? null : process.pid);
  } finally {
    await device.close();
  }
});
