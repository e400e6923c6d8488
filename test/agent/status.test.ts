/** agent/status.ts: the report from a state directory and status.json, for people and --json. */
import test from 'ava';
import { parseAgentConfig } from '../../agent/config.js';
import { acquireRunLock, statePaths, writeStatus } from '../../agent/state-dir.js';
import { formatAgentStatus, readAgentStatus } from '../../agent/status.js';
import { enrolledDevice } from './fixtures.js';

const services = parseAgentConfig({ services: { http: '127.0.0.1:8080' } }).services;

test('ok/not enrolled', async (t) => {
  const report = await readAgentStatus('/nonexistent/certunnel-status', services);
  t.false(report.enrolled);
  t.is(report.tunnel.state, 'not running');
  t.regex(formatAgentStatus(report), /^enrolled:\s+no$/m);
});

test('ok/enrolled and running: device, ports, services, expiry, tunnel state, last error', async (t) => {
  const now = Date.now();
  const device = await enrolledDevice({ now });
  const paths = statePaths(device.dir);
  const release = await acquireRunLock(paths);
  try {
    await writeStatus(paths, {
      pid: process.pid, transport: 'ssh2', state: 'backoff', since: new Date(now).toISOString(), connectedSince: null, serial: '101',
      lastError: { code: 'UNREACHABLE', message: 'cannot reach the SSH server: ECONNREFUSED', at: new Date(now).toISOString() }, updatedAt: new Date(now).toISOString(),
    });
    const report = await readAgentStatus(device.dir, services, new Date(now + 10 * 60_000));
    t.true(report.enrolled);
    t.is(report.deviceId, device.deviceId);
    t.deepEqual(report.ports, device.ports);
    t.deepEqual(report.services, [
      { name: 'ssh', brokerPort: 20000, target: '127.0.0.1:22' },
      { name: 'http', brokerPort: 20001, target: '127.0.0.1:8080' },
    ]);
    t.false(report.certificate!.expired);
    t.true(Math.abs(report.certificate!.expiresInSeconds - 50 * 60) <= 1, String(report.certificate!.expiresInSeconds));
    t.deepEqual({ ...report.tunnel, since: null }, { state: 'backoff', running: true, pid: process.pid, transport: 'ssh2', endpoint: null, since: null, connectedSince: null });
    t.is(report.lastError?.code, 'UNREACHABLE');
    const text = formatAgentStatus(report);
    t.regex(text, /^device:\s+dev_test0000000000001 \(kiosk-1\)$/m);
    t.regex(text, /^certificate:\s+serial \d+, valid until \S+ \(in (50m0s|49m59s)\)$/m);
    t.regex(text, /^tunnel:\s+backoff \(pid \d+, ssh2/m);
    t.regex(text, /^last error:\s+UNREACHABLE at /m);
    const later = await readAgentStatus(device.dir, services, new Date(now + 2 * 3600_000));
    t.true(later.certificate!.expired);
    t.regex(formatAgentStatus(later), /EXPIRED .*ago/);
  } finally {
    await release();
  }
  // The agent is gone: "not running", unless it ended revoked or closed.
  t.is((await readAgentStatus(device.dir, services)).tunnel.state, 'not running');
  await writeStatus(paths, {
    pid: 1, transport: 'ssh2', state: 'revoked', since: new Date(now).toISOString(), connectedSince: null, serial: '101', lastError: null, updatedAt: new Date(now).toISOString(),
  });
  const revoked = await readAgentStatus(device.dir, services);
  t.is(revoked.tunnel.state, 'revoked');
  t.false(revoked.tunnel.running);
  await device.close();
});
