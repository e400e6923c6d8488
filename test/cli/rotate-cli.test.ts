/**
 * `certunnel rotate start|status|commit|rollback`, the real CLI (a child
 * process) against a real broker: human output that says what happens,
 * --json documents, refusals with their codes.
 */
import test from 'ava';
import type { RotationResponse, RotationStatusResponse, TrustRootWire } from '../../api/index.js';
import { describeStatus } from '../../cli/rotate-commands.js';
import { withBroker } from '../../testkit/broker.js';
import { enrollTestDevice } from '../../testkit/device-tunnel.js';
import { runCli } from '../../testkit/cli.js';

test('ok/rotate: start, status naming the lagging device, commit refused, --force commits and says what happens to it', (t) =>
  withBroker(async (b) => {
    const admin = { CERTUNNEL_API_KEY: b.init.adminKey };
    const device = await enrollTestDevice(b, 'lagger');
    const started = await runCli(['rotate', 'start', 'user-ca', '--data', b.dir], admin);
    t.is(started.code, 0, started.stderr);
    // One node: every up node (itself) has loaded the next key by the time start answers.
    t.regex(started.stdout, /^Rotation \d+ of user-ca: learn\n/);
    t.regex(started.stdout, /certificates of both CAs log in/);

    const status = await runCli(['rotate', 'status', '--data', b.dir], admin);
    t.is(status.code, 0, status.stderr);
    t.regex(status.stdout, /nodes: 1 of 1 up have loaded the next key/);
    t.regex(status.stdout, /devices: 0 of 1 active have learned it/);
    t.regex(status.stdout, new RegExp(`Lagging devices \\(1;[^\\n]*\\n  ${device.id}  lagger  last seen never`));
    t.regex(status.stdout, /Commit now only with --force: lagging devices' certificates are refused/);
    const doc = JSON.parse((await runCli(['rotate', 'status', '--data', b.dir, '--json'], admin)).stdout) as RotationStatusResponse;
    t.like(doc, { rotation: { root: 'user-ca', phase: 'learn' }, devices: { active: 1, learned: 0 } });

    const refused = await runCli(['rotate', 'commit', '--data', b.dir, '--json'], admin);
    t.is(refused.code, 1);
    t.is((JSON.parse(refused.stderr) as { error: { code: string } }).error.code, 'ROTATION_DEVICES_LAGGING');
    const forced = await runCli(['rotate', 'commit', '--force', '--data', b.dir], admin);
    t.is(forced.code, 0, forced.stderr);
    t.regex(forced.stdout, /: forced\n/);
    t.regex(forced.stdout, /old key is kept in each data directory as \*\.retired-\d+/);
    t.regex(forced.stdout, /Forced: lagging devices' certificates are refused from then on; each is back once it renews with its device key/);

    const none = await runCli(['rotate', 'status', '--data', b.dir, '--json'], admin);
    t.is((JSON.parse(none.stderr) as { error: { code: string } }).error.code, 'ROTATION_NOT_FOUND');
  }));

test('ok/rotate rollback; fail/an unknown root: BAD_ARGUMENT before any request', (t) =>
  withBroker(async (b) => {
    const admin = { CERTUNNEL_API_KEY: b.init.adminKey };
    const started = JSON.parse((await runCli(['rotate', 'start', 'host-key', '--data', b.dir, '--json'], admin)).stdout) as RotationResponse;
    const rolled = await runCli(['rotate', 'rollback', '--data', b.dir], admin);
    t.is(rolled.code, 0, rolled.stderr);
    t.regex(rolled.stdout, new RegExp(`Rolled back: ${started.rotation.from.replace(/[+/]/g, '.')} stays current`));
    const bad = await runCli(['rotate', 'start', 'everything', '--data', b.dir, '--json'], admin);
    t.is(bad.code, 1);
    t.is((JSON.parse(bad.stderr) as { error: { code: string } }).error.code, 'BAD_ARGUMENT');
    t.is(await b.broker.store.activeRotation(), null);
  }));

/** A status in learn with one lagging device, for ROOT. */
function laggingStatus(root: TrustRootWire): RotationStatusResponse {
  return {
    rotation: { id: 7, root, phase: 'learn', from: 'SHA256:from', next: 'SHA256:next', startedAt: '2026-12-06T03:00:00.000Z', startedBy: 'apikey:key_x', learnAt: '2026-12-06T03:00:00.010Z', finishedAt: null, finishedBy: null, outcome: null },
    nodes: { acked: 1, up: 1, lagging: [] },
    devices: { active: 2, learned: 1, lagging: [{ id: 'dev_aaaaaaaaaaaaaaaa', name: 'kiosk-3', lastSeenAt: '2026-12-06T02:59:00.000Z' }], laggingNotListed: 0 },
  };
}

test('ok/rotate status: what --force does to a lagging device is said per root, as docs/rotation.md tells it', (t) => {
  const forced = (root: TrustRootWire): string => /Commit now only with --force: (.*)$/.exec(describeStatus(laggingStatus(root)))![1]!;
  t.regex(forced('user-ca'), /certificates are refused from then on; each is back once it renews with its device key/);
  // The host key stays: a device that missed the new host CA still connects (it pins the key).
  t.regex(forced('host-ca'), /^nothing is refused: the host key stays/);
  t.regex(forced('host-key'), /each renews once over the API, learns the new key from the answer and connects/);
  t.regex(forced('api-tls'), /renews under its pin's server name while this broker process serves the retired key/);
  t.true(describeStatus(laggingStatus('host-ca')).includes('\n  dev_aaaaaaaaaaaaaaaa  kiosk-3  last seen 2026-12-06T02:59:00.000Z\n'));
});
