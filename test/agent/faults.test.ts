/**
 * The agent (real CLI processes) under faults: the broker killed and
 * restarted, a network drop without FIN, a spoofed broker, the broker's API
 * down at renewal time, and a stale sshd session holding the ports.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { apiRequest } from '../../api/index.js';
import { delayBound } from '../../agent/backoff.js';
import { EXIT } from '../../agent/errors.js';
import { withBroker } from '../../testkit/broker.js';
import { runCli, spawnBroker, type BrokerProcess } from '../../testkit/cli.js';
import { startDeviceService, startGatewayEnv, type DeviceService } from '../../testkit/gateway.js';
import { withTempDir } from '../../testkit/openssh.js';
import { spawnSsh, waitFor } from '../../testkit/ssh-client.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { agentConfig, answersWithin, mintToken, spawnAgent, type AgentProcess } from './fixtures.js';
import { FaultProxy, freePool, freePort, startBrokerSshd } from './net-fixtures.js';

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']);
});

const BACKOFF_CAP_MS = 2000; // agentConfig's backoff.capMs
const KEEPALIVE_BOUND_MS = 2000 * (2 + 1); // agentConfig's keepalive: 2 s x 2, +1 interval

function echoWorks(port: number, text: string, timeoutMs = 10_000): Promise<void> {
  return answersWithin(port, text, `ssh:${text}`, timeoutMs);
}

function since(agent: AgentProcess): number {
  return agent.logs.length;
}

test('broker killed and restarted: both transports are connected again within their backoff bound; traffic works again', async (t) => {
  await withTempDir(async (dir) => {
    const data = join(dir, 'data');
    // Fixed ports below the ephemeral range, so that the restarted broker gets them back.
    const ports6 = await freePool(6);
    const pool = { first: ports6.first + 2, last: ports6.last };
    const init = await runCli(['init', '--data', data, '--api-listen', `127.0.0.1:${ports6.first}`, '--ssh-listen', `127.0.0.1:${ports6.first + 1}`, '--port-range', `${pool.first}-${pool.last}`]);
    t.is(init.code, 0, init.stderr);
    const adminKey = /^\s+(ctk_\S+)$/m.exec(init.stdout)![1]!;
    const pin = (await readFile(join(data, 'tls', 'api.pin'), 'utf8')).trim();
    let broker: BrokerProcess = await spawnBroker(['--data', data, '--log-level', 'warn']);
    const services: DeviceService[] = [];
    const agents: AgentProcess[] = [];
    try {
      for (const transport of ['ssh2', 'openssh']) {
        const ssh = await startDeviceService('ssh:');
        const http = await startDeviceService('http:');
        services.push(ssh, http);
        const stateDir = join(dir, transport);
        const cfg = join(dir, `${transport}.json`);
        await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: broker.apiUrl, pin }, stateDir, transport, ssh, http)));
        const minted = await apiRequest<{ tokens: Array<{ token: string }> }>({ baseUrl: broker.apiUrl, pin, apiKey: adminKey }, 'POST', '/v1/tokens', { count: 1 });
        const enrolled = await runCli(['agent', 'enroll', '--config', cfg], { CERTUNNEL_ENROLL_TOKEN: minted.tokens[0]!.token });
        t.is(enrolled.code, 0, enrolled.stderr);
        agents.push(spawnAgent(['run', '--config', cfg]));
      }
      await Promise.all(agents.map((a) => a.waitForLog((l) => l.event === 'connected', 'first connection')));
      const ports = [pool.first, pool.first + 2];
      for (const port of ports) await echoWorks(port, 'before');

      const marks = agents.map(since);
      t.is(await broker.stop('SIGKILL'), null);
      await Promise.all(agents.map((a, i) => a.waitForLog((l) => l.event === 'tunnel_lost', 'tunnel lost', 10_000, marks[i])));
      const downMarks = agents.map(since);
      broker = await spawnBroker(['--data', data, '--log-level', 'warn', '--api-listen', `127.0.0.1:${broker.apiPort}`, '--ssh-listen', `127.0.0.1:${broker.sshPort}`]);
      const ready = Date.now();
      const delays = await Promise.all(agents.map(async (a, i) => {
        await a.waitForLog((l) => l.event === 'connected', 'reconnected', 20_000, downMarks[i]);
        return Date.now() - ready;
      }));
      // Each agent's next attempt comes at most one capped backoff delay after the broker is back, plus the connection itself.
      const bound = delayBound(99, { baseMs: 200, capMs: BACKOFF_CAP_MS }) + 3000;
      t.log(`reconnected after the broker was ready: ssh2 ${delays[0]} ms, openssh ${delays[1]} ms (bound ${bound} ms)`);
      for (const d of delays) t.true(d <= bound, `${d} ms > ${bound} ms`);
      for (const port of ports) await echoWorks(port, 'after');
      for (const a of agents) t.true(a.logs.slice(downMarks[0]).some((l) => l.event === 'backoff'), 'retried with backoff while the broker was down');
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
      await broker.stop();
      await Promise.all(services.map((s) => s.close()));
    }
  });
});

for (const transport of ['ssh2', 'openssh'] as const) {
  test(`${transport}: a network drop without FIN is noticed within the keepalive bound and the stale session is taken over at once; a spoofed broker is never connected to`, async (t) => {
    const proxy = new FaultProxy(0);
    await proxy.listen();
    await withBroker(async (b) => {
      proxy.target = b.broker.sshPort;
      const ssh = await startDeviceService('ssh:');
      const http = await startDeviceService('http:');
      const spoof = await startGatewayEnv();
      await withTempDir(async (dir) => {
        const cfg = join(dir, 'agent.json');
        await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: b.broker.apiUrl, pin: b.init.apiPin }, join(dir, 'state'), transport, ssh, http)));
        t.is((await runCli(['agent', 'enroll', '--config', cfg], { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) })).code, 0);
        const state = JSON.parse(await readFile(join(dir, 'state', 'state.json'), 'utf8')) as { ports: { first: number } };
        const port = state.ports.first;
        const agent = spawnAgent(['run', '--config', cfg]);
        try {
          await agent.waitForLog((l) => l.event === 'connected', 'connected');
          await echoWorks(port, 'one');

          // The cable is pulled somewhere between device and broker: no FIN, no RST.
          let mark = since(agent);
          proxy.blackhole();
          const dropped = Date.now();
          const lost = await agent.waitForLog((l) => l.event === 'tunnel_lost', 'tunnel lost', KEEPALIVE_BOUND_MS + 3000, mark);
          t.is(lost.code, 'KEEPALIVE_TIMEOUT');
          const noticed = Date.now() - dropped;
          t.true(noticed <= KEEPALIVE_BOUND_MS + 1500, `noticed after ${noticed} ms`);
          // The broker still holds the old session (its own keepalives take 45 s): the new one takes it over.
          proxy.pass();
          mark = since(agent);
          const back = Date.now();
          await agent.waitForLog((l) => l.event === 'connected', 'reconnected', 10_000, mark);
          t.log(`${transport}: drop noticed after ${noticed} ms; reconnected ${Date.now() - back} ms after the network came back`);
          t.false(agent.logs.slice(mark).some((l) => l.code === 'FORWARD_REFUSED'), 'the gateway took the stale session over');
          await echoWorks(port, 'two');

          // DNS or routing now leads to another server with another host key.
          mark = since(agent);
          proxy.target = spoof.port;
          proxy.resetAll();
          await waitFor(() => agent.logs.slice(mark).filter((l) => l.event === 'connect_failed' && l.code === 'HOST_KEY_MISMATCH').length >= 2, 'two refused attempts', 15_000);
          t.false(agent.logs.slice(mark).some((l) => l.event === 'connected'));
          t.deepEqual(spoof.gateway.stats().authFailures, {}, 'no authentication reached the spoofed server');
          t.is(spoof.gateway.stats().tunnelsConnected, 0);
          const status = JSON.parse((await runCli(['agent', 'status', '--config', cfg, '--json'])).stdout) as { lastError: { code: string } };
          t.is(status.lastError.code, 'HOST_KEY_MISMATCH');

          // Back to the real broker: the agent recovers by itself.
          mark = since(agent);
          proxy.target = b.broker.sshPort;
          await agent.waitForLog((l) => l.event === 'connected', 'connected to the real broker again', 10_000, mark);
          await echoWorks(port, 'three');
          t.is(await agent.stop('SIGTERM'), EXIT.OK);
        } finally {
          await agent.stop();
        }
      });
      await spoof.close();
      await ssh.close();
      await http.close();
    }, { config: { ssh: { publicPort: proxy.port }, ports: { ...(await freePool(2)), perDevice: 2 } } });
    await proxy.close();
  });
}

test('ssh2: renewal failure (the broker API down) never drops a working tunnel; renewal resumes when the API is back', async (t) => {
  const api = new FaultProxy(0);
  await api.listen();
  await withBroker(async (b) => {
    api.target = b.broker.apiPort;
    const ssh = await startDeviceService('ssh:');
    const http = await startDeviceService('http:');
    await withTempDir(async (dir) => {
      const cfg = join(dir, 'agent.json');
      await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: `https://127.0.0.1:${api.port}`, pin: b.init.apiPin }, join(dir, 'state'), 'ssh2', ssh, http)));
      t.is((await runCli(['agent', 'enroll', '--config', cfg], { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) })).code, 0);
      const state = JSON.parse(await readFile(join(dir, 'state', 'state.json'), 'utf8')) as { ports: { first: number } };
      // The API is down before the agent starts: no renewal can succeed (and reconnect) however late,
      // on a loaded machine, the first connection comes. A renewal due before it fails in the foreground.
      api.mode = 'refuse';
      const agent = spawnAgent(['run', '--config', cfg]);
      try {
        const first = await agent.waitForLog((l) => l.event === 'connected', 'connected');
        const at = agent.logs.indexOf(first);
        const failedSince = (): Array<Record<string, unknown>> => agent.logs.slice(at + 1).filter((l) => l.event === 'renew_failed');
        await waitFor(() => failedSince().length >= 3, 'three failed renewals while connected', 50_000);
        t.false(agent.logs.slice(at + 1).some((l) => l.event === 'tunnel_lost' || l.event === 'connected'), 'the tunnel was never dropped');
        t.true(failedSince().every((l) => l.code === 'UNREACHABLE' && l.state === 'connected'));
        t.true(agent.logs.filter((l) => l.event === 'renew_failed').every((l) => l.code === 'UNREACHABLE'));
        await echoWorks(state.ports.first, 'during');
        const mark = since(agent);
        api.mode = 'pass';
        const renewed = await agent.waitForLog((l) => l.event === 'renewed', 'renewal once the API is back', 15_000, mark);
        await agent.waitForLog((l) => l.event === 'connected' && l.serial === renewed.serial, 'reconnected with the new certificate', 10_000, mark);
        await echoWorks(state.ports.first, 'after');
      } finally {
        await agent.stop();
      }
    });
    await ssh.close();
    await http.close();
  }, { config: { certs: { deviceValiditySeconds: 60, renewAtFraction: 0.1 }, ports: { ...(await freePool(2)), perDevice: 2 } } });
  await api.close();
});

test('OpenSSH mode: the forward is refused while a stale session holds the ports; the agent retries and gets them once it is gone', async (t) => {
  const pool = await freePool(2);
  const sshPort = await freePort();
  await withBroker(async (b) => {
    const sshd = await startBrokerSshd(b.dir, sshPort, pool);
    const ssh = await startDeviceService('ssh:');
    const http = await startDeviceService('http:');
    try {
      await withTempDir(async (dir) => {
        const stateDir = join(dir, 'state');
        const cfg = join(dir, 'agent.json');
        await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: b.broker.apiUrl, pin: b.init.apiPin }, stateDir, 'ssh2', ssh, http)));
        t.is((await runCli(['agent', 'enroll', '--config', cfg], { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) })).code, 0);
        // A session left over from an earlier run of this device holds its ports.
        const stale = spawnSsh([
          '-N', '-F', '/dev/null', '-o', `UserKnownHostsFile=${join(stateDir, 'known_hosts')}`, '-o', 'StrictHostKeyChecking=yes',
          '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'ExitOnForwardFailure=yes', '-i', join(stateDir, 'device_key'),
          '-o', `CertificateFile=${join(stateDir, 'device_key-cert.pub')}`, '-R', `127.0.0.1:${pool.first}:127.0.0.1:${ssh.port}`,
          '-R', `127.0.0.1:${pool.last}:127.0.0.1:${http.port}`, '-p', String(sshPort), '-l', 'tunnel',
        ]);
        await echoWorks(pool.first, 'stale');
        const agent = spawnAgent(['run', '--config', cfg]);
        try {
          await waitFor(() => agent.logs.filter((l) => l.event === 'connect_failed' && l.code === 'FORWARD_REFUSED').length >= 2, 'refused forwards', 20_000);
          t.false(agent.logs.some((l) => l.event === 'connected'));
          await stale.stop();
          const gone = Date.now();
          await agent.waitForLog((l) => l.event === 'connected', 'connected once the stale session is gone', 15_000);
          t.log(`connected ${Date.now() - gone} ms after the stale session ended`);
          await echoWorks(pool.first, 'mine');
        } finally {
          await agent.stop();
          await stale.stop();
        }
      });
    } finally {
      await sshd.stop();
      await ssh.close();
      await http.close();
    }
  }, { config: { ssh: { mode: 'openssh', listen: `127.0.0.1:${sshPort}`, publicPort: sshPort }, ports: { ...pool, perDevice: 2 } } });
});
