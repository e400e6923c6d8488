/** agent/renewal-schedule.ts: what a failed renewal means (renewalVerdict): stop for good, or retry. */
import test from 'ava';
import { EXIT } from '../../agent/errors.js';
import { renewalVerdict } from '../../agent/renewal-schedule.js';

const verdicts: Array<[string, string, { state: string; status: number } | null]> = [
  ['fail/revoked', 'DEVICE_REVOKED', { state: 'revoked', status: EXIT.REVOKED }],
  ['fail/grace exceeded', 'RENEWAL_GRACE_EXCEEDED', { state: 'closed', status: EXIT.REFUSED }],
  ['fail/device unknown', 'DEVICE_UNKNOWN', { state: 'closed', status: EXIT.REFUSED }],
  ['ok/unreachable is retried', 'UNREACHABLE', null],
  ['ok/a busy store is retried', 'STORE_BUSY', null],
  ['ok/a stale request is retried', 'REQUEST_STALE', null],
];

for (const [name, code, want] of verdicts) {
  test(name, (t) => {
    const verdict = renewalVerdict(code, 'the broker said no');
    if (want === null) t.is(verdict, null);
    else t.like(verdict, { ...want, code });
  });
}
