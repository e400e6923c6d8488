/**
 * agent/certunnel-agent.sh, the POSIX shell agent (run by dash here), tested
 * like the Node agent: enroll with curl → tunnel up with ssh -N -R → traffic
 * reaches the device's service → renewal with ssh-keygen -Y sign + curl →
 * the tunnel comes back with the new certificate → revoke → exit 10. Its
 * state directory is the Node agent's: `certunnel agent status` reads it.
 * With several SSH endpoints (a second real gateway with the broker's host
 * key and CA): the node it is on stops → it comes back on the other; a dead
 * endpoint costs no backoff; a state.json from before the list still works.
 */
import test from 'ava';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EXIT } from '../../agent/errors.js';
import { loadEnrollment, statePaths } from '../../agent/state-dir.js';
import { readAgentStatus, type AgentStatusReport } from '../../agent/status.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { REPO_ROOT, runCli } from '../../testkit/cli.js';
import { isListening, startDeviceService, type DeviceService, type GatewayEnv } from '../../testkit/gateway.js';
import { runCommand, withTempDir } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { answersWithin, exchangeWithin, mintToken, spawnShellAgent, within } from './fixtures.js';
import { freePool, freePort, startBrokerSshd, startPeerGateway, type BrokerSshd } from './net-fixtures.js';

const SCRIPT = join(REPO_ROOT, 'agent', 'certunnel-agent.sh');

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']);
});

/** The shell agent as a process: its JSON lines, and the first EVENT line from line FROM on. */
function runShellAgent(args: readonly string[]) {
  const agent = spawnShellAgent(args);
  const waitForEvent = (event: string, from = 0, timeoutMs = 20_000): Promise<Record<string, unknown>> => agent.waitForLog((l) => l.event === event, `a ${event} event`, timeoutMs, from);
  return { child: agent.child, lines: agent.logs, exited: agent.exited, output: agent.output, waitForEvent };
}

for (const mode of ['embedded', 'openssh'] as const) {
  test(`${mode} broker: shell agent: enroll with curl, tunnel with ssh -N -R, renewal with ssh-keygen -Y sign, reconnect, revoke -> 10`, async (t) => {
    const pool = await freePool(2);
    const sshPort = mode === 'openssh' ? await freePort() : 0;
    const config: Record<string, unknown> = { certs: { deviceValiditySeconds: 60, renewAtFraction: 0.1 }, ports: { ...pool, perDevice: 2 } };
    if (mode === 'openssh') config.ssh = { mode: 'openssh', listen: `127.0.0.1:${sshPort}`, publicPort: sshPort };
    await withBroker(async (b) => {
      let sshd: BrokerSshd | undefined;
      const svc = await startDeviceService('ssh:');
      const web = await startDeviceService('http:');
      try {
        if (mode === 'openssh') sshd = await startBrokerSshd(b.dir, sshPort, pool);
        await withTempDir(async (dir) => {
          const state = join(dir, 'state');
          const token = await mintToken(b);
          const enroll = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', state, '--name', 'shell-1'], {
            env: { CERTUNNEL_ENROLL_TOKEN: token },
          });
          t.is(enroll.code, 0, enroll.stderr);
          t.regex(enroll.stdout, /^enrolled dev_\w+: ports \d+-\d+/);
          t.is((await stat(join(state, 'device_key'))).mode & 0o777, 0o600);
          // The Node agent reads what the shell agent wrote.
          const enrollment = await loadEnrollment(state);
          t.truthy(enrollment);
          t.deepEqual(enrollment!.state.ports, pool);
          t.is(enrollment!.state.name, 'shell-1');
          const again = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: token } });
          t.is(again.code, EXIT.ERROR);
          t.regex(again.stderr, /ALREADY_ENROLLED/);
          const used = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', join(dir, 'other')], { env: { CERTUNNEL_ENROLL_TOKEN: token } });
          t.is(used.code, EXIT.REFUSED);
          t.regex(used.stderr, /TOKEN_USED/);

          const agent = runShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--service', `1:127.0.0.1:${web.port}`,
            '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']);
          try {
            const up = await agent.waitForEvent('connected');
            // Under load the certificate may already have been renewed before the first connection.
            t.true(BigInt(String(up.serial)) >= BigInt(enrollment!.state.serial));
            // The Node agent's status reader understands the shell agent's status.json and run.pid.
            const status = await readAgentStatus(state, []);
            t.is(status.tunnel.state, 'connected');
            t.true(status.tunnel.running);
            t.is(status.tunnel.transport, 'openssh-sh');
            await answersWithin(pool.first, 'sh', 'ssh:sh');
            await answersWithin(pool.last, 'web', 'http:web');

            const renewed = await agent.waitForEvent('renewed', agent.lines.indexOf(up), 30_000);
            t.not(renewed.serial, up.serial);
            const from = agent.lines.indexOf(renewed);
            await waitFor(() => agent.lines.slice(from).some((l) => l.event === 'connected' && l.serial === renewed.serial), 'reconnected with the new certificate', 15_000);
            if (sshd) t.regex(sshd.output(), new RegExp(`serial ${String(renewed.serial)}\\)`));
            else t.true(b.logs.some((l) => l.includes('ssh session authenticated') && l.includes(`"serial":"${String(renewed.serial)}"`)));
            await answersWithin(pool.first, 'again', 'ssh:again');
            const stateJson = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { serial: string; renewedAt: string | null };
            t.is(stateJson.serial, String(renewed.serial));
            t.truthy(stateJson.renewedAt);

            await b.call(b.admin, 'POST', `/v1/devices/${enrollment!.state.deviceId}/revoke`, { reason: 'shell' });
            const code = await within(agent.exited, 30_000, -99);
            t.is(code, EXIT.REVOKED, agent.output().slice(-3000));
            t.true(agent.lines.some((l) => l.event === 'revoked'));
            t.false(await isListening(pool.first));
            const after = JSON.parse((await runCli(['agent', 'status', '--state-dir', state, '--json'])).stdout) as AgentStatusReport;
            t.is(after.tunnel.state, 'revoked');
            t.false(agent.output().includes(token));
            t.true(agent.lines.length > 3 && agent.lines.every((l) => typeof l.event === 'string'), 'JSON lines');
          } finally {
            agent.child.kill('SIGTERM');
            await agent.exited;
          }
        });
      } finally {
        await sshd?.stop();
        await svc.close();
        await web.close();
      }
    }, { config });
  });
}

test('shell agent: stops cleanly on SIGTERM with status 0 and ends its ssh', async (t) => {
  await withBroker(async (b) => {
    const svc = await startDeviceService('ssh:');
    try {
      await withTempDir(async (dir) => {
        const state = join(dir, 'state');
        const enroll = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) } });
        t.is(enroll.code, 0, enroll.stderr);
        const { ports } = (await loadEnrollment(state))!.state;
        const agent = runShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--poll', '1']);
        await agent.waitForEvent('connected');
        t.is(await exchangeWithin(ports.first, 'x'), 'ssh:x');
        const started = Date.now();
        agent.child.kill('SIGTERM');
        t.is(await agent.exited, 0);
        t.true(Date.now() - started < 5000);
        await waitFor(async () => !(await isListening(ports.first)), 'the tunnel is gone', 5000);
        const usage = await runCommand('sh', [SCRIPT, 'run']);
        t.is(usage.code, EXIT.USAGE);
        const notEnrolled = await runCommand('sh', [SCRIPT, 'run', '--state-dir', join(dir, 'none')]);
        t.is(notEnrolled.code, EXIT.NOT_ENROLLED);
      });
    } finally {
      await svc.close();
    }
  });
});

test('ok/enroll: a lost answer does not lose the token (the kept key is presented again); a refusal keeps nothing', async (t) => {
  await withBroker(async (b) => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const token = await mintToken(b);
      const enroll = (url: string, stateDir = state) =>
        runCommand('sh', [SCRIPT, 'enroll', '--url', url, '--pin', b.init.apiPin, '--state-dir', stateDir], { env: { CERTUNNEL_ENROLL_TOKEN: token } });
      const down = await enroll(`https://127.0.0.1:${await freePort()}`);
      t.is(down.code, EXIT.ERROR, down.stderr);
      t.regex(down.stderr, /UNREACHABLE/);
      const pendingPub = (await readFile(join(state, 'device_key.pending.pub'), 'utf8')).trim();
      // The broker takes the next attempt but its answer is lost on the way.
      const unheard = await b.call<{ deviceId: string }>(b.anonymous, 'POST', '/v1/enroll', { token, publicKey: pendingPub.split(' ').slice(0, 2).join(' ') });
      const ok = await enroll(b.broker.apiUrl);
      t.is(ok.code, 0, ok.stderr);
      t.regex(ok.stdout, new RegExp(`^enrolled ${unheard.deviceId}:`));
      t.is((await readFile(join(state, 'device_key.pub'), 'utf8')).trim(), pendingPub);
      // Another device with the same token is refused, and keeps no key.
      const other = join(dir, 'other');
      const used = await enroll(b.broker.apiUrl, other);
      t.is(used.code, EXIT.REFUSED);
      t.regex(used.stderr, /TOKEN_USED/);
      await t.throwsAsync(stat(join(other, 'device_key.pending')));
    });
  });
});

// ---------------------------------------------------------------------------
// Several SSH endpoints.

interface EndpointsRig {
  readonly b: TestBroker;
  readonly pool: { first: number; last: number };
  readonly state: string;
  readonly svc: DeviceService;
  run(): ReturnType<typeof runShellAgent>;
}

/** An embedded broker on BROKERPORT telling devices ENDPOINTS, and a device enrolled by the shell agent. */
async function withShellEndpoints(brokerPort: number, endpoints: string[], fn: (r: EndpointsRig) => Promise<void>, certs: Record<string, unknown> = {}): Promise<void> {
  const pool = await freePool(2);
  await withBroker(async (b) => {
    const svc = await startDeviceService('ssh:');
    try {
      await withTempDir(async (dir) => {
        const state = join(dir, 'state');
        const enroll = await runCommand('sh', [SCRIPT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) } });
        if (enroll.code !== 0) throw new Error(`enroll failed: ${enroll.stderr}`);
        const run = () => runShellAgent(['run', '--state-dir', state, '--service', `0:127.0.0.1:${svc.port}`, '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']);
        await fn({ b, pool, state, svc, run });
      });
    } finally {
      await svc.close();
    }
  }, { config: { ports: { ...pool, perDevice: 2 }, ssh: { listen: `127.0.0.1:${brokerPort}`, endpoints }, certs } });
}

test('shell agent, embedded broker + a second gateway: the node it is on stops; it comes back on the other and traffic flows', async (t) => {
  const brokerPort = await freePort();
  const peerPort = await freePort();
  let peer: GatewayEnv | undefined;
  await withShellEndpoints(brokerPort, [`127.0.0.1:${brokerPort}`, `127.0.0.1:${peerPort}`], async (r) => {
    peer = await startPeerGateway(r.b, peerPort);
    const both = [{ host: '127.0.0.1', port: brokerPort }, { host: '127.0.0.1', port: peerPort }];
    // The Node agent reads the list the shell agent stored.
    t.deepEqual((await loadEnrollment(r.state))!.state.sshEndpoints, both);
    const agent = r.run();
    try {
      const up = await agent.waitForEvent('connected');
      const firstPort = Number(up.port);
      t.true([brokerPort, peerPort].includes(firstPort), JSON.stringify(up));
      await answersWithin(r.pool.first, 'one', 'ssh:one');
      t.is((await readAgentStatus(r.state, [])).tunnel.endpoint, `127.0.0.1:${firstPort}`);
      const stopped = Date.now();
      await (firstPort === peerPort ? peer.close() : r.b.broker.ssh.close());
      const from = agent.lines.indexOf(up) + 1;
      const otherPort = firstPort === brokerPort ? peerPort : brokerPort;
      await waitFor(() => agent.lines.slice(from).some((l) => l.event === 'connected' && l.port === otherPort), 'connected on the other node', 30_000);
      await answersWithin(r.pool.first, 'two', 'ssh:two');
      t.log(`shell agent: back on the other node and carrying traffic ${Date.now() - stopped} ms after the first stopped`);
      const after = agent.lines.slice(from);
      const lost = after.findIndex((l) => l.event === 'tunnel_lost');
      t.is(after[lost]?.endpoint, `127.0.0.1:${firstPort}`);
      const again = after.findIndex((l) => l.event === 'connected');
      t.false(after.slice(lost, again).some((l) => l.event === 'backoff'), 'the other endpoint was dialled at once');
      t.is((await readAgentStatus(r.state, [])).tunnel.endpoint, `127.0.0.1:${otherPort}`);
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited;
      await peer?.close();
    }
  });
});

test('shell agent: endpoints dead from the start cost no backoff; it connects on the live one', async (t) => {
  const brokerPort = await freePort();
  const dead = [await freePort(), await freePort()];
  await withShellEndpoints(brokerPort, [`127.0.0.1:${dead[0]}`, `127.0.0.1:${brokerPort}`, `127.0.0.1:${dead[1]}`], async (r) => {
    let deadTried = 0;
    for (let run = 0; run < 2; run++) {
      const agent = r.run();
      try {
        const up = await agent.waitForEvent('connected', 0, 30_000);
        t.is(up.port, brokerPort);
        await answersWithin(r.pool.first, `run${run}`, `ssh:run${run}`);
        const before = agent.lines.slice(0, agent.lines.indexOf(up));
        t.false(before.some((l) => l.event === 'backoff'));
        const failed = before.filter((l) => l.event === 'connect_failed');
        t.true(failed.every((l) => l.code === 'UNREACHABLE' && dead.some((p) => l.endpoint === `127.0.0.1:${p}`)), JSON.stringify(failed));
        deadTried += failed.length;
      } finally {
        agent.child.kill('SIGTERM');
        await agent.exited;
      }
    }
    t.log(`shell agent: ${deadTried} dead endpoints dialled before the live one in 2 runs`);
  });
});

test('shell agent: a state.json from before the list keeps its one endpoint; the next renewal stores the list and known_hosts for it', async (t) => {
  const brokerPort = await freePort();
  const otherPort = await freePort();
  await withShellEndpoints(brokerPort, [`127.0.0.1:${brokerPort}`, `127.0.0.1:${otherPort}`], async (r) => {
    const paths = statePaths(r.state);
    // What the shell agent before 0.4 wrote.
    const text = await readFile(paths.state, 'utf8');
    t.regex(text, /"sshEndpoints":\[/);
    await writeFile(paths.state, text.replace(/"sshEndpoints":\[[^\]]*\],/, ''));
    const hostKey = (await loadEnrollment(r.state))!.state.ssh.hostKey;
    await writeFile(paths.knownHosts, `[127.0.0.1]:${brokerPort} ${hostKey} certunnel-broker\n`);
    t.is((await loadEnrollment(r.state))!.state.sshEndpoints, undefined);
    const agent = r.run();
    try {
      const up = await agent.waitForEvent('connected');
      t.is(up.port, brokerPort);
      await answersWithin(r.pool.first, 'old', 'ssh:old');
      await agent.waitForEvent('renewed', agent.lines.indexOf(up), 30_000);
      t.deepEqual((await loadEnrollment(r.state))!.state.sshEndpoints, [{ host: '127.0.0.1', port: brokerPort }, { host: '127.0.0.1', port: otherPort }]);
      t.regex(await readFile(paths.knownHosts, 'utf8'), new RegExp(`^\\[127\\.0\\.0\\.1\\]:${brokerPort},\\[127\\.0\\.0\\.1\\]:${otherPort} `, 'm'));
      await answersWithin(r.pool.first, 'renewed', 'ssh:renewed');
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
  }, { deviceValiditySeconds: 60, renewAtFraction: 0.1 });
});

/** A stand-in broker whose enrollment answer carries SSHENDPOINTS (the rest is shaped like a grant). */
async function withFakeEnrollAnswer<T>(sshEndpoints: unknown, fn: (url: string) => Promise<T>): Promise<T> {
  const hostKey = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ';
  const server = createServer((_req, res) => {
    res.writeHead(201, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      deviceId: 'dev_fake0000000000001', name: null, ports: { first: 20000, last: 20001 }, certificate: 'ssh-ed25519-cert-v01@openssh.com AAAA fake',
      serial: '7', validAfter: '2026-01-01T00:00:00.000Z', validBefore: '2026-01-01T01:00:00.000Z', renewAfter: '2026-01-01T00:40:00.000Z',
      sshEndpoints, ssh: { host: '127.0.0.1', port: 2222, username: 'tunnel', hostKey, hostCertificateAuthority: hostKey },
    }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    return await fn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

const shellBadLists: Array<[string, unknown]> = [
  ['fail/comma (a second known_hosts pattern)', [{ host: '127.0.0.1', port: 2222 }, { host: 'a.example,*', port: 22 }]],
  ['fail/leading dash (an ssh option)', [{ host: '-oProxyCommand=touch /tmp/x', port: 22 }]],
  ['fail/space', [{ host: 'a b', port: 22 }]],
  ['fail/port 0', [{ host: 'a.example', port: 0 }]],
  ['fail/port 65536', [{ host: 'a.example', port: 65536 }]],
];
for (const [name, list] of shellBadLists) {
  test(`shell agent: enrollment answer with sshEndpoints ${name} is GRANT_INVALID and writes no state`, async (t) => {
    await withFakeEnrollAnswer(list, async (url) => {
      await withTempDir(async (dir) => {
        const state = join(dir, 'state');
        const enroll = await runCommand('sh', [SCRIPT, 'enroll', '--url', url, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: 'ctt_fake_token' } });
        t.is(enroll.code, EXIT.ERROR, enroll.stdout + enroll.stderr);
        t.regex(enroll.stderr, /GRANT_INVALID/);
        await t.throwsAsync(stat(join(state, 'state.json')));
        await t.throwsAsync(stat(join(state, 'known_hosts')));
      });
    });
  });
}

test('shell agent: the same stand-in answer with a good list is stored (the refusals above come from the list)', async (t) => {
  const list = [{ host: 'node-1.example', port: 2222 }, { host: '::1', port: 2223 }];
  await withFakeEnrollAnswer(list, async (url) => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const enroll = await runCommand('sh', [SCRIPT, 'enroll', '--url', url, '--state-dir', state], { env: { CERTUNNEL_ENROLL_TOKEN: 'ctt_fake_token' } });
      t.is(enroll.code, 0, enroll.stderr);
      t.regex(enroll.stdout, /ssh 127\.0\.0\.1:2222 node-1\.example:2222 \[::1\]:2223,/);
      const stored = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { sshEndpoints: unknown };
      t.deepEqual(stored.sshEndpoints, list);
      t.regex(await readFile(join(state, 'known_hosts'), 'utf8'), /^\[127\.0\.0\.1\]:2222,\[node-1\.example\]:2222,\[::1\]:2223 ssh-ed25519 /m);
    });
  });
});
