import test from 'ava';
import { generateKeyPair, parseCertificateLine, parsePublicKey, formatPublicKey } from '../../ca/index.js';
import type { EnrollResponse } from '../../api/index.js';
import { withBroker } from '../../testkit/broker.js';
import { exchange, isListening, startDeviceService } from '../../testkit/gateway.js';
import { spawnSsh, sshArgs, waitFor, writeClientIdentity, writeKnownHosts } from '../../testkit/ssh-client.js';

// A broker wired end to end in its default (embedded) mode: the certificate
// the HTTPS API issues is what the real `ssh` client presents to the
// broker's own gateway, and an API revocation closes the live tunnel.
test('ok/enroll over HTTPS, tunnel with ssh -R through the broker, presence, metrics, revoke closes it', async (t) => {
  await withBroker(async (b) => {
    const minted = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', {
      token: minted.tokens[0]!.token, publicKey: formatPublicKey(key.publicKey), name: 'kiosk-e2e',
    });
    const service = await startDeviceService('kiosk-e2e\n');
    const identity = await writeClientIdentity(b.dir, 'device', key, parseCertificateLine(grant.certificate));
    const knownHosts = await writeKnownHosts(`${b.dir}/known_hosts`, '127.0.0.1', grant.ssh.port, parsePublicKey(grant.ssh.hostKey));
    const port = grant.ports.first;
    const ssh = spawnSsh([
      ...sshArgs({ port: grant.ssh.port, knownHosts, identity, user: grant.ssh.username }),
      '-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:${port}:127.0.0.1:${service.port}`,
    ]);
    try {
      await waitFor(() => isListening(port), 'the tunnel port on the broker');
      const reply = await exchange(port, 'hello');
      t.is(reply.toString(), 'kiosk-e2e\nhello');

      await waitFor(async () => (await b.call<{ online: boolean }>(b.admin, 'GET', '/v1/devices/kiosk-e2e')).online, 'device online');
      const shown = await b.call<{ online: boolean; connectedSince: string | null; remoteAddr: string | null }>(b.admin, 'GET', '/v1/devices/kiosk-e2e');
      t.truthy(shown.connectedSince);
      t.is(shown.remoteAddr, '127.0.0.1');
      const metrics = (await b.call<Buffer>(b.anonymous, 'GET', '/metrics')).toString();
      t.regex(metrics, /certunnel_tunnels_connected 1/);
      t.regex(metrics, /certunnel_devices\{status="online"\} 1/);
      t.regex(metrics, /certunnel_enrollments_total\{outcome="ok"\} 1/);

      // The device may not bind the http slot of another block, nor 0.0.0.0.
      const rogue = spawnSsh([
        ...sshArgs({ port: grant.ssh.port, knownHosts, identity }),
        '-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:${port + 2}:127.0.0.1:${service.port}`,
      ]);
      t.not(await rogue.exited, 0);
      t.false(await isListening(port + 2));

      const revokedAt = Date.now();
      await b.call(b.admin, 'POST', '/v1/devices/kiosk-e2e/revoke', { reason: 'test' });
      await waitFor(async () => !(await isListening(port)), 'the tunnel to close', 1000);
      t.true(Date.now() - revokedAt <= 1000);
      t.not(await ssh.exited, 0);
      await waitFor(async () => !(await b.call<{ online: boolean }>(b.admin, 'GET', '/v1/devices/kiosk-e2e')).online, 'device offline');
      // And it cannot come back with its (still unexpired) certificate.
      const again = spawnSsh([...sshArgs({ port: grant.ssh.port, knownHosts, identity }), '-N', '-R', `127.0.0.1:${port}:127.0.0.1:${service.port}`]);
      t.not(await again.exited, 0);
      t.regex(again.stderr(), /Permission denied/);
      const audit = await b.call<{ items: Array<{ action: string; outcome: string }> }>(b.admin, 'GET', '/v1/audit?limit=1000');
      t.true(audit.items.some((e) => e.action.startsWith('ssh.') || e.action.startsWith('auth.')), 'the refused login is audited');
    } finally {
      await ssh.stop();
      await service.close();
    }
  });
});
