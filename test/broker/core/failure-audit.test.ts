/**
 * withFailureAudit: a failed rule is audited with its error's code, the
 * error itself is rethrown untouched, and a success writes nothing.
 */
import test from 'ava';
import { BrokerError } from '../../../broker/core/errors.js';
import { withFailureAudit, type FailureAuditRow } from '../../../broker/core/failure-audit.js';
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
