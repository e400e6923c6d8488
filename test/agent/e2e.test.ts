/**
 * The agent end to end, as a device runs it: the real CLI (`certunnel agent
 * enroll`, `run`, `status`) as child processes against a real broker, with
 * the embedded gateway and with a real sshd in OpenSSH mode, for both
 * transports: enroll → tunnel up → a TCP request to the device's broker
 * port reaches its local service → renewal → the tunnel comes back with the
 * new certificate → revoke → the agent stops with its revoked status.
 */
import test from 'ava';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EXIT } from '../../agent/errors.js';
import { readAgentStatus, type AgentStatusReport } from '../../agent/status.js';
import { withBroker } from '../../testkit/broker.js';
import { runCli } from '../../testkit/cli.js';
import { isListening, startDeviceService } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { agentConfig, answersWithin, mintToken, spawnAgent, within } from './fixtures.js';
import { freePool, freePort, startBrokerSshd, type BrokerSshd } from './net-fixtures.js';

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']); // once, before tests run side by side
});

/** Short certificates (renewal about 6-12 s after issue) and fast retries. */
const CERTS = { deviceValiditySeconds: 60, renewAtFraction: 0.1 };

const ok = (text: string) => (line: Record<string, unknown>): boolean => line.event === text;

for (const mode of ['embedded', 'openssh'] as const) {
  for (const transport of ['ssh2', 'openssh'] as const) {
    test(`${mode} broker, ${transport} transport: enroll, tunnel, renewal, reconnect with the new certificate, revoke`, async (t) => {
      const pool = await freePool(2);
      const sshPort = mode === 'openssh' ? await freePort() : 0;
      const config: Record<string, unknown> = { certs: CERTS, ports: { ...pool, perDevice: 2 } };
      if (mode === 'openssh') config.ssh = { mode: 'openssh', listen: `127.0.0.1:${sshPort}`, publicPort: sshPort, presencePollSeconds: 1 };
      await withBroker(async (b) => {
        let sshd: BrokerSshd | undefined;
        const svcSsh = await startDeviceService('ssh:');
        const svcHttp = await startDeviceService('http:');
        try {
          if (mode === 'openssh') sshd = await startBrokerSshd(b.dir, sshPort, pool);
          await withTempDir(async (dir) => {
            const stateDir = join(dir, 'state');
            const cfg = join(dir, 'agent.json');
            await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: b.broker.apiUrl, pin: b.init.apiPin }, stateDir, transport, svcSsh, svcHttp)));
            const token = await mintToken(b);

            const enrolled = await runCli(['agent', 'enroll', '--config', cfg, '--name', 'kiosk-1', '--json'], { CERTUNNEL_ENROLL_TOKEN: token });
            t.is(enrolled.code, 0, enrolled.stderr);
            const grant = JSON.parse(enrolled.stdout) as { deviceId: string; ports: { first: number; last: number }; serial: string };
            t.deepEqual(grant.ports, pool);
            t.is((await stat(join(stateDir, 'device_key'))).mode & 0o777, 0o600);
            t.is((await stat(stateDir)).mode & 0o777, 0o700);

            const agent = spawnAgent(['run', '--config', cfg]);
            try {
              const first = await agent.waitForLog(ok('connected'), 'tunnel up');
              // Under load the certificate may already have been renewed before the first connection.
              t.true(BigInt(String(first.serial)) >= BigInt(grant.serial));
              await answersWithin(pool.first, 'hello', 'ssh:hello');
              await answersWithin(pool.last, 'GET /', 'http:GET /');
              // The broker knows it is connected: from its gateway, or in OpenSSH mode from sshd's listening ports.
              const online = async (): Promise<boolean> => (await b.call<{ online: boolean }>(b.admin, 'GET', `/v1/devices/${grant.deviceId}`)).online;
              await waitFor(online, 'the broker to see the device online', 10_000);

              // A renewal (about 6-12 s after issue) while connected, then a reconnection with the new certificate.
              const renewed = await agent.waitForLog(ok('renewed'), 'renewal', 30_000, agent.logs.indexOf(first));
              const newSerial = String(renewed.serial);
              t.not(newSerial, String(first.serial));
              const from = agent.logs.indexOf(renewed);
              await agent.waitForLog((l) => l.event === 'connected' && l.serial === newSerial, 'reconnected with the new certificate', 20_000, from);
              if (sshd) {
                t.regex(sshd.output(), new RegExp(`Accepted publickey for tunnel .*ID device:${grant.deviceId} \\(serial ${newSerial}\\)`));
              } else {
                t.true(b.logs.some((l) => l.includes('ssh session authenticated') && l.includes(`"serial":"${newSerial}"`)), 'the gateway saw the new serial');
              }
              await answersWithin(pool.first, 'again', 'ssh:again');

              const report = await readAgentStatus(stateDir, []);
              t.true(report.enrolled);
              t.is(report.deviceId, grant.deviceId);
              t.true(report.tunnel.running);
              t.false(report.certificate!.expired);

              await b.call(b.admin, 'POST', `/v1/devices/${grant.deviceId}/revoke`, { reason: 'e2e' });
              const code = await within(agent.exited, 30_000, -99);
              t.is(code, EXIT.REVOKED, agent.output().slice(-3000));
              const revoked = agent.logs.find(ok('revoked'));
              t.is(revoked?.msg, 'device revoked by the broker; stopping for good');
              // The session ends with the agent; the broker unbinds its port as it tears the session down (under load, a moment later).
              await waitFor(async () => !(await isListening(pool.first)), 'the tunnel port to close', 10_000);
              await waitFor(async () => !(await online()), 'the broker to see the device offline', 10_000);
              const status = await runCli(['agent', 'status', '--config', cfg, '--json']);
              t.is(status.code, 0, status.stderr);
              const after = JSON.parse(status.stdout) as AgentStatusReport;
              t.is(after.tunnel.state, 'revoked');
              t.false(after.tunnel.running);
              t.deepEqual(after.services.map((s) => s.brokerPort), [pool.first, pool.last]);

              // Never a token, a private key or a certificate in the logs.
              const output = agent.output() + enrolled.stdout + enrolled.stderr;
              const keyBody = (await readFile(join(stateDir, 'device_key'), 'utf8')).split('\n').filter((l) => l && !l.startsWith('-----'));
              const certBlob = (await readFile(join(stateDir, 'device_key-cert.pub'), 'utf8')).split(' ')[1]!;
              t.false(output.includes(token), 'token in the logs');
              t.false(keyBody.some((l) => output.includes(l)), 'private key in the logs');
              t.false(output.includes(certBlob.slice(0, 60)), 'certificate in the logs');
              t.true(agent.logs.length > 5 && agent.logs.every((l) => typeof l.level === 'string' && typeof l.time === 'string'), 'JSON lines');
            } finally {
              await agent.stop();
            }
          });
        } finally {
          await sshd?.stop();
          await svcSsh.close();
          await svcHttp.close();
        }
      }, { config });
    });
  }
}

test('enroll: a used token is a clear error naming the code (status 11); an enrolled state dir refuses without --force; a failed --force keeps the old enrollment', async (t) => {
  await withBroker(async (b) => {
    await withTempDir(async (dir) => {
      const stateDir = join(dir, 'state');
      const args = ['agent', 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', stateDir];
      const token = await mintToken(b);
      await writeFile(join(dir, 'token'), `${token}\n`);
      const first = await runCli([...args, '--token-file', join(dir, 'token')]);
      t.is(first.code, 0, first.stderr);
      const state = await readFile(join(stateDir, 'state.json'), 'utf8');
      const key = await readFile(join(stateDir, 'device_key'), 'utf8');

      const again = await runCli([...args, '--token-file', join(dir, 'token')]);
      t.is(again.code, EXIT.ERROR);
      t.regex(again.stderr, /^certunnel: ALREADY_ENROLLED: /m);

      const used = await runCli([...args, '--token-file', join(dir, 'token'), '--force']);
      t.is(used.code, EXIT.REFUSED);
      t.regex(used.stderr, /^certunnel: TOKEN_USED: /m);
      t.false(used.stderr.includes(token));
      t.is(await readFile(join(stateDir, 'state.json'), 'utf8'), state, 'the old enrollment is intact');
      t.is(await readFile(join(stateDir, 'device_key'), 'utf8'), key);
      await t.throwsAsync(stat(join(stateDir, 'device_key.pending')));

      // Independent of each other: run side by side.
      // An empty --token-file (the unit's SetCredential= default once the factory token file is gone) is no token.
      await writeFile(join(dir, 'empty-token'), '\n');
      const [pinned, unknown, notEnrolled, notEnrolledEmpty] = await Promise.all([
        mintToken(b).then((tok) => runCli(['agent', 'enroll', '--url', b.broker.apiUrl, '--pin', `sha256//${'B'.repeat(43)}=`, '--state-dir', join(dir, 'third')], { CERTUNNEL_ENROLL_TOKEN: tok })),
        runCli(['agent', 'run', '--no-such-flag']),
        runCli(['agent', 'run', '--state-dir', join(dir, 'empty')]),
        runCli(['agent', 'run', '--state-dir', join(dir, 'empty2'), '--token-file', join(dir, 'empty-token')]),
      ]);
      t.is(notEnrolledEmpty.code, EXIT.NOT_ENROLLED, notEnrolledEmpty.stdout + notEnrolledEmpty.stderr);
      t.is(pinned.code, EXIT.ERROR);
      t.regex(pinned.stderr, /^certunnel: PIN_MISMATCH: /m);
      t.is(unknown.code, EXIT.USAGE);
      t.is(notEnrolled.code, EXIT.NOT_ENROLLED, notEnrolled.stdout + notEnrolled.stderr);
    });
  });
});
