/**
 * withFailureAudit: a failed rule is audited with its error's code, the
 * error itself is rethrown untouched, and a success writes nothing.
 */
import test from 'ava';
import { BrokerError } from '../../../broker/core/errors.js';
import { FailureAggregator, withFailureAudit, type FailureAuditRow } from '../../../broker/core/failure-audit.js';
import type { NewAuditEvent } from '../../../broker/store/types.js';

class FakeAuditStore {
  readonly rows: NewAuditEvent[] = [];
  constructor(private readonly broken = false) {}
  async appendAudit(event: NewAuditEvent): Promise<void> {
    if (this.broken) throw new Error('disk full');
    this.rows.push(event);
  }
}

const at = new Date('2026-01-01T00:00:00Z');
const row = (target: string | null = 'dev_x'): FailureAuditRow => ({ at, actor: 'device:dev_x', action: 'device.renew', target, remoteAddr: '198.51.100.7' });

test('ok/the result passes through, nothing audited', async (t) => {
  const store = new FakeAuditStore();
  t.is(await withFailureAudit(store, () => row(), async () => 42), 42);
  t.deepEqual(store.rows, []);
});

const failures: Array<[string, Error, string]> = [
  ['fail/broker-error', new BrokerError('REQUEST_STALE', 'stale'), 'REQUEST_STALE'],
  ['fail/other-error', new TypeError('bug'), 'INTERNAL'],
];
for (const [name, thrown, outcome] of failures) {
  test(`${name}: audited as ${outcome}, the same error rethrown`, async (t) => {
    const store = new FakeAuditStore();
    const err = await t.throwsAsync(withFailureAudit(store, () => row(), () => Promise.reject(thrown)));
    t.is(err, thrown);
    t.deepEqual(store.rows, [{ ...row(), outcome }]);
  });
}

test('fail/the row is built after the failure: it names what the rule had found', async (t) => {
  const store = new FakeAuditStore();
  let found: string | null = null;
  await t.throwsAsync(withFailureAudit(store, () => row(found), async () => {
    found = 'dev_found';
    throw new BrokerError('DEVICE_REVOKED', 'revoked');
  }));
  t.is(store.rows[0]!.target, 'dev_found');
});

test('fail/a failed audit write does not hide the error', async (t) => {
  const err = await t.throwsAsync(withFailureAudit(new FakeAuditStore(true), () => row(), () => Promise.reject(new BrokerError('TOKEN_USED', 'used'))));
  t.true(err instanceof BrokerError && err.code === 'TOKEN_USED');
});

test('aggregator: the first failure per (action, outcome, address) and window is written, repeats make one row with a count', async (t) => {
  const rows: NewAuditEvent[] = [];
  const agg = new FailureAggregator({ appendAudit: async (e) => void rows.push(e) }, 60_000);
  const fail = (ms: number, remoteAddr: string, outcome = 'TOKEN_UNKNOWN') =>
    agg.appendAudit({ at: new Date(ms), actor: 'anonymous', action: 'device.enroll', target: null, remoteAddr, outcome: outcome as 'ok' });
  await fail(0, '192.0.2.1');
  for (let i = 1; i <= 500; i++) await fail(i * 10, '192.0.2.1');
  await fail(100, '192.0.2.2');
  await fail(200, '192.0.2.1', 'BAD_REQUEST');
  t.is(rows.length, 3, 'one row per key so far');
  t.is(await agg.flush(new Date(59_999)), 0, 'no window has ended');
  await fail(60_000, '192.0.2.1'); // the next window: the count of the last one is written first
  t.like(rows[3], { at: new Date(60_000), actor: 'anonymous', remoteAddr: '192.0.2.1', outcome: 'TOKEN_UNKNOWN', details: { repeated: 500 } });
  t.is(rows.length, 5);
  await fail(60_001, '192.0.2.1');
  t.is(await agg.flush(null), 1, 'flush(null) writes every open count');
  t.like(rows[5], { details: { repeated: 1 } });
});
