/**
 * `certunnel rotate start|status|commit|rollback`, the real CLI (a child
 * process) against a real broker: human output that says what happens,
 * --json documents, refusals with their codes.
 */
import test from 'ava';
import type { RotationResponse, RotationStatusResponse } from '../../api/index.js';
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
