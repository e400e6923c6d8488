/**
 * agent/endpoints.ts and the supervisor with several SSH endpoints (fake
 * clock, dialer and broker API): a random order per round, the others tried
 * before any backoff, a dropped tunnel moving on once, the list from every
 * renewal, and state directories from before the list.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, type AgentResult } from '../../agent/agent.js';
import { parseAgentConfig } from '../../agent/config.js';
import { EndpointRotation, endpointRound } from '../../agent/endpoints.js';
import { AgentError, EXIT } from '../../agent/errors.js';
import { checkGrant, loadEnrollment, readStatus, renderKnownHosts, sshEndpointsOf, statePaths } from '../../agent/state-dir.js';
import type { SshAddressWire } from '../../api/index.js';
import { formatPublicKey, generateKeyPair } from '../../ca/index.js';
import { sshKeygen } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { FakeClock, FakeTransport, enrolledDevice, fakeRenewApi, memoryLogger, settle } from './fixtures.js';

const A = { host: '127.0.0.1', port: 2222 };
const B = { host: 'node-b.example', port: 2223 };
const C = { host: '::1', port: 2224 };
const BACKOFF = { baseMs: 1000, capMs: 8000, minMs: 0 };
const key = (e: SshAddressWire): string => `${e.host}:${e.port}`;

/** A random that returns DRAWS in turn, then 0.5. */
function drawing(...draws: number[]): () => number {
  return () => draws.shift() ?? 0.5;
}

test('ok/endpointRound: every order of three is reachable, one per pair of draws (uniform); AVOID is left out', (t) => {
  const orders = new Set<string>();
  for (const first of [0, 0.34, 0.67]) for (const second of [0, 0.5]) orders.add(endpointRound([A, B, C], drawing(first, second)).map(key).join(' '));
  t.is(orders.size, 6);
  t.deepEqual(endpointRound([A], Math.random), [A]);
  t.deepEqual(endpointRound([A, B, C], drawing(0.99, 0.99), B).map(key).sort(), [A, C].map(key).sort());
  t.deepEqual(endpointRound([A], Math.random, A), []);
  // A random() of exactly 1 (a broken generator) still gives a permutation.
  t.deepEqual(endpointRound([A, B, C], () => 1).map(key).sort(), [A, B, C].map(key).sort());
});

test('ok/EndpointRotation: a drop moves on once, then backs off until a stable tunnel or a backoff', (t) => {
  const rotation = new EndpointRotation(drawing(0, 0));
  const [first] = rotation.round([A, B]);
  rotation.dialing(first!);
  t.true(rotation.failOver([A, B], false));
  const next = rotation.round([A, B]);
  t.deepEqual(next, [A, B].filter((e) => key(e) !== key(first!)), 'the others, not the one that dropped');
  rotation.dialing(next[0]!);
  t.false(rotation.failOver([A, B], false), 'a second quick drop backs off');
  rotation.backedOff();
  t.is(rotation.round([A, B]).length, 2, 'after the backoff, every endpoint again');
  t.true(rotation.failOver([A, B], false));
  t.true(rotation.failOver([A, B], true), 'a tunnel that was stable may move on again');
  t.false(new EndpointRotation(Math.random).failOver([A], false), 'nothing dialled yet');
  const single = new EndpointRotation(Math.random);
  single.dialing(A);
  t.false(single.failOver([A], true), 'one endpoint: nowhere else to go');
});

test('ok/sshEndpointsOf: the list, or the ssh endpoint alone (state.json before 0.4); ssh first if the list lacks it', (t) => {
  const ssh = { ...A, username: 'tunnel', hostKey: '', hostCertificateAuthority: '' };
  t.deepEqual(sshEndpointsOf({ ssh }), [A]);
  t.deepEqual(sshEndpointsOf({ ssh, sshEndpoints: [] }), [A]);
  t.deepEqual(sshEndpointsOf({ ssh, sshEndpoints: [A, B] }), [A, B]);
  t.deepEqual(sshEndpointsOf({ ssh, sshEndpoints: [B, C] }), [A, B, C]);
});

async function rig(options: { endpoints?: SshAddressWire[]; transport: FakeTransport; random?: () => number }) {
  const start = Date.UTC(2030, 0, 1);
  const device = await enrolledDevice({ now: start, endpoints: options.endpoints });
  const clock = new FakeClock(start);
  const api = fakeRenewApi(device, clock);
  const log = memoryLogger();
  const config = parseAgentConfig({ stateDir: device.dir, backoff: BACKOFF, services: {} });
  const agent = new Agent({ config, transport: options.transport, logger: log, clock, random: options.random ?? Math.random, api: api.call });
  const done: Promise<AgentResult> = agent.run();
  const until = (cond: () => boolean, label: string): Promise<void> => waitFor(async () => {
    await settle(1);
    return cond();
  }, label, 30_000);
  const stop = async (): Promise<void> => {
    agent.stop();
    await done;
    await device.close();
  };
  return { device, clock, api, log, agent, done, until, stop, transport: options.transport };
}

const dialled = (transport: FakeTransport): string[] => transport.specs.map((s) => `${s.host}:${s.port}`);

test('ok/two endpoints down: the third is dialled at once, no backoff; status.json names the endpoint in use', async (t) => {
  const r = await rig({ endpoints: [A, B, C], transport: new FakeTransport(['UNREACHABLE', 'TIMEOUT', 'ok']) });
  try {
    await r.until(() => r.agent.machine.state === 'connected', 'connected');
    t.is(new Set(dialled(r.transport)).size, 3, 'each endpoint once');
    t.is(r.log.events('backoff').length, 0);
    t.deepEqual(r.log.events('connect_failed').map((e) => e.endpointsLeft), [2, 1]);
    const last = r.transport.specs[2]!;
    const on = `${last.host.includes(':') ? `[${last.host}]` : last.host}:${last.port}`;
    t.is(r.log.events('connected')[0]!.endpoint, on);
    await waitFor(async () => (await readStatus(statePaths(r.device.dir)))?.state === 'connected', 'status.json connected', 5000);
    t.is((await readStatus(statePaths(r.device.dir)))?.endpoint, on);
    t.true(r.transport.specs.every((s) => s.username === 'tunnel' && s.hostKey.equals(r.device.hostKey.publicKey)), 'one login and host key for all');
  } finally {
    await r.stop();
  }
});

test('ok/every endpoint down: each round dials each endpoint once, then one backoff', async (t) => {
  // A fixed random: backoffs of 500 then 1000 ms, so that moving the clock by the first fires it alone (a random
  // pair of short delays could otherwise fit in one move, and the test would see three backoffs).
  const r = await rig({ endpoints: [A, B], transport: new FakeTransport([], 'UNREACHABLE'), random: () => 0.5 });
  try {
    await r.until(() => r.log.events('backoff').length === 1, 'backoff');
    t.deepEqual([...dialled(r.transport)].sort(), [key(A), key(B)].sort());
    t.is(r.log.events('backoff')[0]!.attempt, 1);
    await r.clock.advance(Number(r.log.events('backoff')[0]!.delayMs));
    await r.until(() => r.log.events('backoff').length === 2, 'second backoff');
    t.is(r.transport.specs.length, 4);
    t.deepEqual(dialled(r.transport).slice(2).sort(), [key(A), key(B)].sort());
    t.is(r.log.events('backoff')[1]!.attempt, 2, 'the backoff grows per round, not per endpoint');
  } finally {
    await r.stop();
  }
});

test('fail/a certificate refused by one endpoint is renewed, not tried on the others', async (t) => {
  const r = await rig({ endpoints: [A, B], transport: new FakeTransport(['AUTH_REFUSED', 'ok']) });
  try {
    await r.until(() => r.agent.machine.state === 'connected', 'connected after renewal');
    t.is(r.api.calls.length, 1);
    const states = r.log.events('state').map((e) => `${String(e.from)}>${String(e.to)}`);
    t.deepEqual(states.slice(0, 4), ['initial>connecting', 'connecting>renewing', 'renewing>connecting', 'connecting>connected']);
    t.is(r.log.events('connect_failed').length, 1);
  } finally {
    await r.stop();
  }
});

test('ok/tunnel dropped: the other endpoint at once; a second quick drop backs off', async (t) => {
  const r = await rig({ endpoints: [A, B], transport: new FakeTransport() });
  try {
    await r.until(() => r.agent.machine.state === 'connected', 'connected');
    const first = dialled(r.transport)[0]!;
    r.transport.tunnels[0]!.drop('DISCONNECTED');
    await r.until(() => r.transport.tunnels.length === 2 && r.agent.machine.state === 'connected', 'connected elsewhere');
    t.not(dialled(r.transport)[1], first, 'not the node that dropped');
    t.is(r.log.events('backoff').length, 0);
    t.is(r.log.events('tunnel_lost')[0]!.endpoint, first);
    r.transport.tunnels[1]!.drop('DISCONNECTED');
    await r.until(() => r.agent.machine.state === 'backoff', 'backoff');
    t.is(r.transport.specs.length, 2, 'no dial before the delay');
  } finally {
    await r.stop();
  }
});

test('ok/a state.json from before the list (older agent or broker): the ssh endpoint alone, a drop backs off as before', async (t) => {
  const r = await rig({ transport: new FakeTransport() });
  try {
    const state = JSON.parse(await readFile(join(r.device.dir, 'state.json'), 'utf8')) as Record<string, unknown>;
    t.false('sshEndpoints' in state);
    await r.until(() => r.agent.machine.state === 'connected', 'connected');
    t.deepEqual(dialled(r.transport), ['127.0.0.1:2222']);
    r.transport.tunnels[0]!.drop('DISCONNECTED');
    await r.until(() => r.agent.machine.state === 'backoff', 'backoff');
  } finally {
    await r.stop();
  }
});

test('ok/renewal brings a new list: state.json and known_hosts follow it, the reconnection uses it', async (t) => {
  const r = await rig({ endpoints: [A], transport: new FakeTransport() });
  try {
    await r.until(() => r.agent.machine.state === 'connected', 'connected');
    r.device.endpoints = [B, C];
    await r.clock.advance(3600_000 * 0.75);
    await r.until(() => r.api.calls.length === 1 && r.transport.tunnels.length === 2 && r.agent.machine.state === 'connected', 'renewed and reconnected');
    t.true([key(B), key(C)].includes(dialled(r.transport)[1]!), dialled(r.transport)[1]);
    const enrollment = await loadEnrollment(r.device.dir);
    t.deepEqual(enrollment!.state.sshEndpoints, [B, C]);
    const knownHosts = statePaths(r.device.dir).knownHosts;
    t.is((await sshKeygen(['-F', '[node-b.example]:2223', '-f', knownHosts])).code, 0);
    t.is((await sshKeygen(['-F', '[::1]:2224', '-f', knownHosts])).code, 0);
    t.is((await sshKeygen(['-F', '[127.0.0.1]:2222', '-f', knownHosts])).code, 1, 'the dropped endpoint is gone');
  } finally {
    await r.stop();
  }
});

test('ok/known_hosts for several endpoints: ssh-keygen -F finds the pinned key and the host CA for each', async (t) => {
  const hostKey = generateKeyPair();
  const hostCa = generateKeyPair();
  const device = await enrolledDevice({ now: Date.now() });
  try {
    const path = join(device.dir, 'kh');
    const ssh = { ...A, username: 'tunnel', hostKey: formatPublicKey(hostKey.publicKey), hostCertificateAuthority: formatPublicKey(hostCa.publicKey) };
    await writeFile(path, renderKnownHosts(ssh, [A, B, { host: 'node-d.example', port: 22 }]));
    for (const host of ['[127.0.0.1]:2222', '[node-b.example]:2223', 'node-d.example']) {
      const found = await sshKeygen(['-F', host, '-f', path]);
      t.is(found.code, 0, host);
      t.true(found.stdout.includes(formatPublicKey(hostKey.publicKey).split(' ')[1]!), host);
      t.true(found.stdout.includes('@cert-authority'), host);
    }
    t.is((await sshKeygen(['-F', '[node-b.example]:2222', '-f', path])).code, 1);
  } finally {
    await device.close();
  }
});

const badLists: Array<[string, unknown]> = [
  ['fail/empty', []],
  ['fail/not-a-list', { host: 'a', port: 1 }],
  ['fail/port-0', [{ host: 'a.example', port: 0 }]],
  ['fail/port-string', [{ host: 'a.example', port: '22' }]],
  ['fail/space', [{ host: 'a b', port: 22 }]],
  ['fail/comma (a second known_hosts pattern)', [{ host: 'a.example,*', port: 22 }]],
  ['fail/newline (a second known_hosts line)', [{ host: 'a.example\n@cert-authority *', port: 22 }]],
  ['fail/leading dash (an ssh option)', [{ host: '-oProxyCommand=x', port: 22 }]],
  ['fail/too many', Array.from({ length: 65 }, (_, i) => ({ host: `n${i}.example`, port: 22 }))],
];
for (const [name, list] of badLists) {
  test(`grant sshEndpoints ${name}: GRANT_INVALID; state.json with it: STATE_INVALID`, async (t) => {
    const device = await enrolledDevice({ now: Date.now() });
    try {
      const grant = { ...device.grant({ now: Date.now() }), sshEndpoints: list as SshAddressWire[] };
      const err = t.throws(() => checkGrant(grant, device.key.publicKey));
      t.true(err instanceof AgentError && err.code === 'GRANT_INVALID', String(err));
      const statePath = statePaths(device.dir).state;
      const state = JSON.parse(await readFile(statePath, 'utf8')) as Record<string, unknown>;
      await writeFile(statePath, JSON.stringify({ ...state, sshEndpoints: list }));
      const loaded = await t.throwsAsync(loadEnrollment(device.dir));
      t.true(loaded instanceof AgentError && loaded.code === 'STATE_INVALID' && loaded.exitCode === EXIT.ERROR, String(loaded));
    } finally {
      await device.close();
    }
  });
}
