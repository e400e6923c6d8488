/**
 * Audit rows and a device's revokedBy name the API key a person knows
 * ("alice"), not only its id: `certunnel audit` and `device show` (the real
 * CLI) and the /v1 wire (`actorName`, `revokedByName`: optional fields, added).
 */
import test from 'ava';
import { apiRequest, type AuditEventView, type DeviceView, type ListAuditResponse } from '../../api/index.js';
import { withBroker } from '../../testkit/broker.js';
import { runCli } from '../../testkit/cli.js';
import { enrollTestDevice } from '../../testkit/device-tunnel.js';

test('ok/audit and device show name the API key behind apikey:key_…, also once the key is revoked', (t) =>
  withBroker(async (b) => {
    const alice = await apiRequest<{ id: string; key: string }>(b.admin, 'POST', '/v1/apikeys', { role: 'operator', name: 'alice' });
    const device = await enrollTestDevice(b, 'kiosk-names');
    const env = { CERTUNNEL_API_KEY: alice.key };
    const revoked = await runCli(['device', 'revoke', 'kiosk-names', '--reason', 'lost', '--data', b.dir], env);
    t.is(revoked.code, 0, revoked.stderr);
    const actor = `apikey:${alice.id}`;

    // The wire: optional fields beside the ids, which stay as they were.
    const rows = (await apiRequest<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=device.revoke')).items;
    t.deepEqual(rows.map((e) => [e.actor, e.actorName, e.target]), [[actor, 'alice', device.id]]);
    const enroll = (await apiRequest<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=device.enroll')).items;
    t.is(enroll.length, 1);
    t.false('actorName' in enroll[0]!, `no name for ${enroll[0]!.actor}`);
    const shown = await apiRequest<DeviceView>(b.admin, 'GET', `/v1/devices/${device.id}`);
    t.deepEqual([shown.revokedBy, shown.revokedByName], [actor, 'alice']);

    // The key's revocation does not make its past actions anonymous.
    await apiRequest(b.admin, 'POST', `/v1/apikeys/${alice.id}/revoke`, {});
    const admin = { CERTUNNEL_API_KEY: b.init.adminKey };
    const table = await runCli(['audit', '--action', 'device.revoke', '--data', b.dir], admin);
    t.is(table.code, 0, table.stderr);
    t.regex(table.stdout, new RegExp(`\\s${actor} \\(alice\\)\\s+device\\.revoke\\s+${device.id}\\s+ok`));
    const json = await runCli(['audit', '--action', 'device.revoke', '--data', b.dir, '--json'], admin);
    const row = (JSON.parse(json.stdout) as ListAuditResponse).items[0] as AuditEventView;
    t.deepEqual([row.actor, row.actorName], [actor, 'alice']);

    const show = await runCli(['device', 'show', 'kiosk-names', '--data', b.dir], admin);
    t.is(show.code, 0, show.stderr);
    t.regex(show.stdout, new RegExp(`^revokedBy\\s+${actor} \\(alice\\)$`, 'm'));
    t.notRegex(show.stdout, /^revokedByName/m, 'the name is shown with the actor, not on a line of its own');
    const showJson = JSON.parse((await runCli(['device', 'show', 'kiosk-names', '--data', b.dir, '--json'], admin)).stdout) as DeviceView;
    t.deepEqual([showJson.revokedBy, showJson.revokedByName], [actor, 'alice']);

    // An active device has no revokedBy, and so no name.
    await enrollTestDevice(b, 'kiosk-active');
    const active = await runCli(['device', 'show', 'kiosk-active', '--data', b.dir], admin);
    t.regex(active.stdout, /^revokedBy\s+-$/m);
  }));
