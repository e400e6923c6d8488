/** agent/config.ts: defaults, service mapping by name, validation naming the field, frozen result. */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadAgentConfig, parseAgentConfig } from '../../agent/config.js';
import { AgentError, EXIT } from '../../agent/errors.js';
import { withTempDir } from '../../testkit/openssh.js';

const PIN = `sha256//${'A'.repeat(43)}=`;
const broker = { url: 'https://broker.example:8443', pin: PIN };

test('ok/defaults: ssh2, slot 0 -> 127.0.0.1:22, slot 1 -> 127.0.0.1:80, 15 s x 3 keepalives, frozen', (t) => {
  const c = parseAgentConfig({ broker });
  t.is(c.transport, 'ssh2');
  t.is(c.stateDir, '/var/lib/certunnel');
  t.deepEqual(c.services, [
    { name: 'ssh', slot: 0, host: '127.0.0.1', port: 22 },
    { name: 'http', slot: 1, host: '127.0.0.1', port: 80 },
  ]);
  t.deepEqual(c.keepalive, { intervalSeconds: 15, countMax: 3 });
  t.deepEqual(c.backoff, { baseMs: 1000, capMs: 60_000, factor: 2, minMs: 100 });
  t.true(Object.isFrozen(c) && Object.isFrozen(c.services) && Object.isFrozen(c.services[0]) && Object.isFrozen(c.broker));
  t.throws(() => {
    (c as { transport: string }).transport = 'openssh';
  });
});

test('ok/services by name: override a target, add a slot, disable one, IPv6 target', (t) => {
  const c = parseAgentConfig({
    broker,
    services: { http: '127.0.0.1:8080', ssh: false, mqtt: { slot: 2, target: '[::1]:1883' } },
  });
  t.deepEqual(c.services, [
    { name: 'http', slot: 1, host: '127.0.0.1', port: 8080 },
    { name: 'mqtt', slot: 2, host: '::1', port: 1883 },
  ]);
  const moved = parseAgentConfig({ broker, services: { ssh: { slot: 1, target: '10.0.0.5:22' }, http: { slot: 0, target: '127.0.0.1:80' } } });
  t.deepEqual(moved.services.map((s) => `${s.slot}:${s.name}`), ['0:http', '1:ssh']);
});

const bad: Array<[string, unknown, RegExp]> = [
  ['fail/unknown field', { broker, colour: 'blue' }, /\(top level\)|colour/],
  ['fail/bad pin', { broker: { ...broker, pin: 'sha1//abc' } }, /broker\.pin/],
  ['fail/not a URL', { broker: { url: 'broker:8443' } }, /broker\.url/],
  ['fail/plain http without insecureHttp', { broker: { url: 'http://broker:8080' } }, /broker\.url/],
  ['fail/unknown transport', { broker, transport: 'telnet' }, /transport/],
  ['fail/service without a slot', { broker, services: { mqtt: '127.0.0.1:1883' } }, /services\.mqtt/],
  ['fail/two services on one slot', { broker, services: { web: { slot: 1, target: '127.0.0.1:8080' } } }, /slot 1/],
  ['fail/target without a port', { broker, services: { http: '127.0.0.1' } }, /services\.http/],
  ['fail/port out of range', { broker, services: { http: '127.0.0.1:70000' } }, /services\.http/],
  ['fail/keepalive zero', { broker, keepalive: { intervalSeconds: 0 } }, /keepalive\.intervalSeconds/],
  ['fail/cap below base', { broker, backoff: { baseMs: 5000, capMs: 1000 } }, /backoff/],
  ['fail/bind address not an IP', { broker, ssh: { bindAddress: 'eth0' } }, /ssh\.bindAddress/],
  // The broker's DNS-label rule (api/tunnel.ts DEVICE_NAME), not a looser copy.
  ['fail/device name in capitals', { broker, enroll: { name: 'Kiosk-1' } }, /enroll\.name/],
  ['fail/device name ending in a hyphen', { broker, enroll: { name: 'kiosk-' } }, /enroll\.name/],
];

for (const [name, input, field] of bad) {
  test(name, (t) => {
    const err = t.throws(() => parseAgentConfig(input), { instanceOf: AgentError });
    t.is(err?.code, 'CONFIG_INVALID');
    t.is(err?.exitCode, EXIT.USAGE);
    t.regex(err?.message ?? '', field);
  });
}

test('ok/file + flag overrides; unreadable and non-JSON files are CONFIG_INVALID', async (t) => {
  await withTempDir(async (dir) => {
    const file = join(dir, 'agent.json');
    await writeFile(file, JSON.stringify({ broker, stateDir: '/data/a', transport: 'openssh', enroll: { name: 'kiosk-1' } }));
    const c = await loadAgentConfig({ file, overrides: { stateDir: '/data/b', transport: undefined, enroll: { token: 'ctt_secret_token' } } });
    t.is(c.stateDir, '/data/b');
    t.is(c.transport, 'openssh');
    t.deepEqual({ ...c.enroll }, { name: 'kiosk-1', token: 'ctt_secret_token' });
    const missing = await t.throwsAsync(loadAgentConfig({ file: join(dir, 'nope.json') }));
    t.is((missing as AgentError).code, 'CONFIG_INVALID');
    await writeFile(file, '{ not json');
    const broken = await t.throwsAsync(loadAgentConfig({ file }));
    t.is((broken as AgentError).code, 'CONFIG_INVALID');
    await writeFile(file, '[]');
    t.is(((await t.throwsAsync(loadAgentConfig({ file }))) as AgentError).code, 'CONFIG_INVALID');
  });
});
