import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildRenewRequest } from '../../../agent/renew-request.js';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { createLogger } from '../../../broker/telemetry/logger.js';
import { runMaintenance } from '../../../broker/compose/maintenance.js';
import type { EnrollResponse } from '../../../api/index.js';
import { withBroker } from '../../../testkit/broker.js';
import { sshKeygen } from '../../../testkit/openssh.js';

/** Whether `ssh-keygen -Q -l` output lists SERIAL, alone or inside a range. */
function krlListsSerial(listing: string, serial: bigint): boolean {
  for (const m of listing.matchAll(/^serial: (\d+)(?:-(\d+))?$/gm)) {
    const first = BigInt(m[1]!);
    const last = BigInt(m[2] ?? m[1]!);
    if (serial >= first && serial <= last) return true;
  }
  return false;
}

test('ok/maintenance drops expired serials from the KRL but keeps the revoked key id, and forgets old nonces', async (t) => {
  await withBroker(async (b) => {
    const { tokens } = await b.call<{ tokens: Array<{ token: string }> }>(b.admin, 'POST', '/v1/tokens', { count: 1 });
    const key = generateKeyPair();
    const grant = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/enroll', { token: tokens[0]!.token, publicKey: formatPublicKey(key.publicKey) });
    const renewed = await b.call<EnrollResponse>(b.anonymous, 'POST', '/v1/renew', buildRenewRequest({ deviceId: grant.deviceId, key }));
    await b.call(b.admin, 'POST', `/v1/devices/${grant.deviceId}/revoke`, {});
    const listed = async (): Promise<string> => {
      const path = join(b.dir, 'k.krl');
      await writeFile(path, await b.call<Buffer>(b.anonymous, 'GET', '/v1/krl'));
      return (await sshKeygen(['-Q', '-l', '-f', path])).stdout;
    };
    const before = await listed();
    for (const serial of [grant.serial, renewed.serial]) t.true(krlListsSerial(before, BigInt(serial)), `serial ${serial} is in the KRL`);
    t.regex(await listed(), new RegExp(`id: device:${grant.deviceId}`));

    b.clock.advance(2 * 3600_000); // every certificate of the device has expired
    const pruned = await runMaintenance({ store: b.broker.store, revocations: b.broker.revocations, clock: b.clock.now, logger: createLogger('silent'), keepExpiredCertificatesMs: 86400_000 });
    t.is(pruned.nonces, 1);
    const after = await listed();
    t.false(krlListsSerial(after, BigInt(grant.serial)) || krlListsSerial(after, BigInt(renewed.serial)));
    t.notRegex(after, /serial: /);
    t.regex(after, new RegExp(`id: device:${grant.deviceId}`));
  });
});

test('ok/maintenance prunes failure rows older than audit.failureRetentionDays and keeps state changes; /metrics counts the audit', async (t) => {
  await withBroker(async (b) => {
    await b.call(b.admin, 'POST', '/v1/tokens', { count: 1 }); // token.mint, kept
    await b.broker.store.appendAudit({ at: b.clock.now(), actor: 'anonymous', action: 'device.enroll', target: null, remoteAddr: '192.0.2.9', outcome: 'TOKEN_UNKNOWN' });
    const before = await b.broker.store.countAudit();
    const metric = async (): Promise<number> => Number(/^certunnel_audit_events (\d+)$/m.exec(String(await b.call(b.anonymous, 'GET', '/metrics')))?.[1]);
    t.is(await metric(), before);
    b.clock.advance(91 * 86400_000);
    const pruned = await runMaintenance({
      store: b.broker.store, revocations: b.broker.revocations, clock: b.clock.now, logger: createLogger('silent'),
      keepExpiredCertificatesMs: 86400_000, keepAuditFailuresMs: 90 * 86400_000,
    });
    t.is(pruned.auditFailures, 1);
    t.is(await b.broker.store.countAudit(), before - 1);
    t.true((await b.broker.store.listAudit({ action: 'token.mint' })).items.length === 1);
  });
});
