/**
 * agent/agent.ts, the supervisor, with a fake clock, dialer and broker API:
 * the behaviour under faults, step by step, without sleeping.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent } from '../../agent/agent.js';
import { nextDelay } from '../../agent/backoff.js';
import { parseAgentConfig } from '../../agent/config.js';
import { EXIT } from '../../agent/errors.js';
import { publicKeyBlob } from '../../ca/index.js';
import { FakeClock, FakeTransport, enrolledDevice, fakeRenewApi, memoryLogger, settle, type TestDevice } from './fixtures.js';
import { waitFor } from '../../testkit/ssh-client.js';

const HOUR = 3600_000;
const BACKOFF = { baseMs: 1000, capMs: 8000, minMs: 0 };
const RENEW_BACKOFF = { baseMs: 10_000, capMs: 120_000, minMs: 0 };

interface Rig {
  readonly device: TestDevice;
  readonly clock: FakeClock;
  readonly transport: FakeTransport;
  readonly api: ReturnType<typeof fakeRenewApi>;
  readonly log: ReturnType<typeof memoryLogger>;
  readonly agent: Agent;
  readonly done: Promise<import('../../agent/agent.js').AgentResult>;
}

async function rig(options: { certAgeMs?: number; validitySeconds?: number; transport?: FakeTransport; services?: Record<string, unknown>; token?: boolean } = {}): Promise<Rig> {
  const start = Date.UTC(2030, 0, 1);
  const device = await enrolledDevice({ now: start - (options.certAgeMs ?? 0), validitySeconds: options.validitySeconds });
  const clock = new FakeClock(start);
  const transport = options.transport ?? new FakeTransport();
  const api = fakeRenewApi(device, clock);
  const log = memoryLogger();
  const config = parseAgentConfig({ stateDir: device.dir, backoff: BACKOFF, renewBackoff: RENEW_BACKOFF, services: options.services ?? {} });
  const agent = new Agent({ config, transport, logger: log, clock, random: () => 0.5, api: api.call });
  const done = agent.run();
  return { device, clock, transport, api, log, agent, done };
}

async function until(cond: () => boolean, label: string): Promise<void> {
  await waitFor(async () => {
    await settle(1);
    return cond();
  }, label, 5000);
}

test('ok/connects with the enrolled certificate; slot 0 and 1 go to the configured services', async (t) => {
  const r = await rig({ services: { http: '127.0.0.1:8080' } });
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    const spec = r.transport.specs[0]!;
    t.is(spec.host, '127.0.0.1');
    t.is(spec.port, 2222);
    t.is(spec.username, 'tunnel');
    t.true(publicKeyBlob(spec.hostKey).equals(publicKeyBlob(r.device.hostKey.publicKey)), 'the pinned host key is the broker-provided one');
    t.deepEqual(spec.forwards.map((f) => [f.name, f.remotePort, f.localHost, f.localPort]), [
      ['ssh', 20000, '127.0.0.1', 22],
      ['http', 20001, '127.0.0.1', 8080],
    ]);
    t.is(r.api.calls.length, 0, 'a fresh certificate is not renewed at start');
    const statusState = async (): Promise<string | undefined> =>
      readFile(join(r.device.dir, 'status.json'), 'utf8').then((text) => (JSON.parse(text) as { state: string }).state, () => undefined);
    await waitFor(async () => (await statusState()) === 'connected', 'status.json says connected', 5000);
  } finally {
    r.agent.stop();
    t.is((await r.done).status, EXIT.OK);
    t.false(r.transport.tunnels.some((x) => x.open), 'the tunnel is closed on stop');
    await r.device.close();
  }
});

test('ok/tunnel lost: backoff follows nextDelay with the injected random, grows while failing, resets after a stable connection', async (t) => {
  const r = await rig({ transport: new FakeTransport(['ok', 'UNREACHABLE', 'UNREACHABLE', 'UNREACHABLE', 'ok']) });
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    await r.clock.advance(60_000); // stable for a minute
    r.transport.tunnels[0]!.drop('KEEPALIVE_TIMEOUT');
    await until(() => r.agent.machine.state === 'backoff', 'backoff');
    const expected = [0, 1, 2, 3].map((a) => nextDelay(a, BACKOFF, () => 0.5));
    for (let i = 0; i < 4; i++) {
      await until(() => r.log.events('backoff').length === i + 1, `backoff ${i + 1}`);
      t.is(r.log.events('backoff')[i]!.delayMs, expected[i]);
      t.is(r.transport.specs.length, i + 1, 'no dial before the delay is over');
      await r.clock.advance(expected[i]! - 1);
      t.is(r.transport.specs.length, i + 1);
      await r.clock.advance(1);
    }
    await until(() => r.agent.machine.state === 'connected', 'connected again');
    t.deepEqual(r.log.events('connect_failed').map((e) => e.code), ['UNREACHABLE', 'UNREACHABLE', 'UNREACHABLE']);
    t.is(r.log.events('tunnel_lost')[0]!.code, 'KEEPALIVE_TIMEOUT');
    // A tunnel that dies at once does not reset the backoff…
    r.transport.tunnels[1]!.drop();
    await until(() => r.log.events('backoff').length === 5, 'backoff 5');
    t.is(r.log.events('backoff')[4]!.delayMs, nextDelay(4, BACKOFF, () => 0.5));
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('ok/renews at about two thirds of the life and reconnects with the fresh certificate', async (t) => {
  const r = await rig();
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    const first = r.transport.tunnels[0]!;
    // Due at 2/3 of (1 h + 60 s backdating) after validAfter (the broker's renewAfter, 40 min after issue) plus up to 5% jitter.
    await r.clock.advance(39 * 60_000);
    t.is(r.api.calls.length, 0, 'not renewed before two thirds');
    await r.clock.advance(0.1 * HOUR);
    await until(() => r.api.calls.length === 1 && r.transport.tunnels.length === 2, 'renewed and reconnected');
    const renewedAt = r.api.calls[0]!.at - Date.UTC(2030, 0, 1);
    t.true(renewedAt >= 40 * 60_000 && renewedAt <= 40 * 60_000 + 0.05 * (HOUR + 60_000), String(renewedAt));
    t.false(first.open, 'the old tunnel was closed');
    t.is(r.agent.machine.state, 'connected');
    const oldSerial = first.spec.certificateLine;
    t.not(r.transport.tunnels[1]!.spec.certificateLine, oldSerial, 'the new tunnel uses the new certificate');
    t.regex(await readFile(join(r.device.dir, 'device_key-cert.pub'), 'utf8'), /^ssh-ed25519-cert-v01@openssh\.com /);
    t.is(r.log.events('renewed').length, 1);
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('ok/renewal failure (broker down) never drops the tunnel; retries with backoff until it works', async (t) => {
  const r = await rig();
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    r.api.mode = 'down';
    const due = r.clock.pending()[0]!;
    t.true(due > 40 * 60_000 && due < 43.1 * 60_000, String(due));
    await r.clock.advance(due);
    await until(() => r.api.calls.length === 1, 'first renewal attempt');
    for (let i = 0; i < 3; i++) {
      const delay = nextDelay(i, RENEW_BACKOFF, () => 0.5);
      await r.clock.advance(delay);
      await until(() => r.api.calls.length === i + 2, `renewal retry ${i + 1}`);
      t.is(r.api.calls[i + 1]!.at - r.api.calls[i]!.at, delay);
    }
    t.is(r.transport.tunnels.length, 1);
    t.true(r.transport.tunnels[0]!.open, 'the working tunnel is kept');
    t.is(r.agent.machine.state, 'connected');
    t.true(r.log.events('renew_failed').every((e) => e.code === 'UNREACHABLE'));
    r.api.mode = 'ok';
    await r.clock.advance(nextDelay(3, RENEW_BACKOFF, () => 0.5));
    await until(() => r.transport.tunnels.length === 2 && r.agent.machine.state === 'connected', 'renewed and reconnected');
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('ok/past expiry the background retries go on with capped backoff (no hot loop); a refused certificate is renewed in the foreground', async (t) => {
  const r = await rig({ validitySeconds: 600 });
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    r.api.mode = 'down';
    for (let i = 0; i < 15; i++) {
      await r.clock.advance(60_000); // 15 minutes: 5 past expiry
      await settle();
    }
    const calls = r.api.calls.length;
    t.true(calls >= 5 && calls <= 12, `${calls} renewal attempts in 15 minutes`);
    const gaps = r.api.calls.slice(1).map((c, i) => c.at - r.api.calls[i]!.at);
    t.true(gaps.every((g) => g >= nextDelay(0, RENEW_BACKOFF, () => 0.5) && g <= RENEW_BACKOFF.capMs), gaps.join(','));
    t.true(r.transport.tunnels[0]!.open, 'the agent itself never drops the tunnel');
    // The SSH server closes the expired session and refuses the certificate.
    r.transport.script = ['AUTH_REFUSED'];
    r.transport.tunnels[0]!.drop();
    await until(() => r.agent.machine.state === 'backoff', 'backoff');
    await r.clock.advance(BACKOFF.capMs);
    await until(() => r.agent.machine.state === 'renewing' || r.agent.machine.state === 'backoff', 'renewing after the refusal');
    r.api.mode = 'ok';
    for (let i = 0; i < 3 && r.agent.machine.state !== 'connected'; i++) {
      await until(() => ['backoff', 'connected'].includes(r.agent.machine.state), 'settled');
      await r.clock.advance(BACKOFF.capMs);
    }
    await until(() => r.agent.machine.state === 'connected', 'connected with a renewed certificate');
    t.true(r.api.calls.length > calls);
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('ok/expired while offline: renews first (within the grace period), then connects with the new certificate', async (t) => {
  const r = await rig({ certAgeMs: 5 * HOUR });
  try {
    await until(() => r.agent.machine.state === 'connected', 'connected');
    t.is(r.api.calls.length, 1);
    t.is(r.transport.specs.length, 1, 'never dialled with the expired certificate');
    const states = r.log.events('state').map((e) => `${String(e.from)}>${String(e.to)}`);
    t.deepEqual(states.slice(0, 3), ['initial>renewing', 'renewing>connecting', 'connecting>connected']);
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('fail/expired beyond the grace period: stops with status 11 (re-enroll)', async (t) => {
  const r = await rig({ certAgeMs: 5 * HOUR });
  r.api.mode = 'RENEWAL_GRACE_EXCEEDED';
  const result = await r.done;
  t.is(result.status, EXIT.REFUSED);
  t.is(result.code, 'RENEWAL_GRACE_EXCEEDED');
  t.is(r.transport.specs.length, 0);
  await r.device.close();
});

test('fail/revoked, found by a background renewal: the tunnel closes and the agent stops with status 10', async (t) => {
  const r = await rig();
  await until(() => r.agent.machine.state === 'connected', 'connected');
  r.api.mode = 'DEVICE_REVOKED';
  await r.clock.advance(HOUR);
  const result = await r.done;
  t.is(result.status, EXIT.REVOKED);
  t.is(result.state, 'revoked');
  t.is(r.agent.machine.state, 'revoked');
  t.false(r.transport.tunnels[0]!.open);
  t.is(r.transport.specs.length, 1, 'no further dial');
  t.is(r.log.lines.find((l) => l.obj.event === 'revoked')?.msg, 'device revoked by the broker; stopping for good');
  t.is((JSON.parse(await readFile(join(r.device.dir, 'status.json'), 'utf8')) as { state: string }).state, 'revoked', 'written before run() resolves');
  await r.device.close();
});

test('fail/revoked, found after the SSH server refused the certificate', async (t) => {
  const r = await rig({ transport: new FakeTransport(['ok'], 'AUTH_REFUSED') });
  await until(() => r.agent.machine.state === 'connected', 'connected');
  r.api.mode = 'DEVICE_REVOKED';
  r.transport.tunnels[0]!.drop(); // the broker closed the revoked device's session
  await r.clock.advance(BACKOFF.baseMs);
  const result = await r.done;
  t.is(result.status, EXIT.REVOKED);
  t.is(r.api.calls.length, 1);
  t.deepEqual(r.log.events('state').slice(-3).map((e) => e.to), ['connecting', 'renewing', 'revoked']);
  await r.device.close();
});

test('ok/a certificate refused again after renewal backs off instead of renewing in a loop', async (t) => {
  const r = await rig({ transport: new FakeTransport([], 'AUTH_REFUSED') });
  try {
    for (let i = 0; i < 4; i++) {
      await until(() => r.agent.machine.state === 'backoff', `backoff ${i + 1}`);
      await r.clock.advance(BACKOFF.capMs);
    }
    await until(() => r.agent.machine.state === 'backoff', 'backoff 5');
    const dials = r.transport.specs.length;
    t.is(dials, 10);
    // refused -> renew -> refused -> backoff -> refused -> renew …: one renewal per two refusals.
    t.is(r.api.calls.length, 5);
    t.deepEqual(r.log.events('state').slice(1, 7).map((e) => e.to), ['renewing', 'connecting', 'backoff', 'connecting', 'renewing', 'connecting']);
  } finally {
    r.agent.stop();
    await r.done;
    await r.device.close();
  }
});

test('ok/a spoofed broker (host key mismatch) is never connected to; the agent asks the API for the trust set (once per backoff), and keeps retrying with backoff', async (t) => {
  const r = await rig({ transport: new FakeTransport([], 'HOST_KEY_MISMATCH') });
  try {
    for (let i = 0; i < 5; i++) {
      await until(() => r.agent.machine.state === 'backoff', `backoff ${i + 1}`);
      await r.clock.advance(BACKOFF.capMs);
    }
    await until(() => r.transport.specs.length >= 6, 'six dials');
    t.is(r.transport.tunnels.length, 0);
    t.false(r.log.events('state').some((e) => e.to === 'connected'));
    t.is(r.agent.lastError?.code, 'HOST_KEY_MISMATCH');
    // mismatch -> renew (the trust set may have rotated) -> mismatch -> backoff -> mismatch -> renew …, as for a refused certificate.
    t.deepEqual(r.log.events('state').slice(1, 7).map((e) => e.to), ['renewing', 'connecting', 'backoff', 'connecting', 'renewing', 'connecting']);
    t.true(r.api.calls.length >= 2 && r.api.calls.length <= Math.ceil(r.transport.specs.length / 2), `one renewal per two mismatches (${r.api.calls.length} for ${r.transport.specs.length} dials)`);
  } finally {
    r.agent.stop();
    t.is((await r.done).status, EXIT.OK);
    await r.device.close();
  }
});

test('ok/stop during backoff ends at once with status 0', async (t) => {
  const r = await rig({ transport: new FakeTransport([], 'UNREACHABLE') });
  await until(() => r.agent.machine.state === 'backoff', 'backoff');
  r.agent.stop();
  const result = await r.done;
  t.is(result.status, EXIT.OK);
  t.is(result.state, 'closed');
  await r.device.close();
});

test('ok/a transport that never answers is given up on (and a stop does not wait for it)', async (t) => {
  const r = await rig({ transport: new FakeTransport(['hang'], 'hang') });
  await until(() => r.transport.specs.length === 1, 'first dial');
  await r.clock.advance(20_000 * 3 + 5000);
  await until(() => r.agent.machine.state === 'backoff', 'gave up on the first dial');
  t.is(r.agent.lastError?.code, 'TIMEOUT');
  await r.clock.advance(BACKOFF.capMs);
  await until(() => r.transport.specs.length === 2, 'second dial');
  r.agent.stop();
  await r.clock.advance(3000);
  const result = await r.done;
  t.is(result.status, EXIT.OK);
  await r.device.close();
});

test('fail/not enrolled and no token: status 4', async (t) => {
  const clock = new FakeClock();
  const agent = new Agent({
    config: parseAgentConfig({ stateDir: '/nonexistent/certunnel-test' }), transport: new FakeTransport(), logger: memoryLogger(), clock, writeStatus: false,
  });
  const result = await agent.run();
  t.is(result.status, EXIT.NOT_ENROLLED);
  t.is(result.code, 'NOT_ENROLLED');
});

test('fail/no configured service fits the port block: status 3', async (t) => {
  const r = await rig({ services: { ssh: false, http: false, mqtt: { slot: 5, target: '127.0.0.1:1883' } } });
  const result = await r.done;
  t.is(result.status, EXIT.USAGE);
  t.is(result.code, 'SERVICE_INVALID');
  t.is(r.log.events('service_skipped')[0]!.service, 'mqtt');
  await r.device.close();
});
