/** agent/state-machine.ts: the transition table, illegal transitions refused, terminal states final. */
import test from 'ava';
import { AGENT_STATES, AgentStateMachine, IllegalTransitionError, TRANSITIONS, canTransition, type AgentState } from '../../agent/state-machine.js';

function machineIn(path: AgentState[]): AgentStateMachine {
  const m = new AgentStateMachine(() => 0);
  for (const s of path) m.transition(s);
  return m;
}

const legal: Array<[string, AgentState[]]> = [
  ['ok/first enrollment', ['enrolling', 'connecting', 'connected']],
  ['ok/expired while offline: renew first', ['renewing', 'connecting', 'connected']],
  ['ok/tunnel lost, back off, reconnect', ['connecting', 'connected', 'backoff', 'connecting', 'connected']],
  ['ok/fresh certificate: reconnect', ['connecting', 'connected', 'connecting', 'connected']],
  ['ok/refused certificate: ask the broker', ['connecting', 'renewing', 'connecting']],
  ['ok/revoked while connected', ['connecting', 'connected', 'revoked']],
  ['ok/revoked found by renewal', ['connecting', 'renewing', 'revoked']],
  ['ok/enrollment retried', ['enrolling', 'backoff', 'enrolling', 'connecting']],
  ['ok/stop from backoff', ['connecting', 'backoff', 'closed']],
];

for (const [name, path] of legal) {
  test(name, (t) => {
    const m = machineIn(path);
    t.is(m.state, path[path.length - 1]!);
  });
}

const illegal: Array<[string, AgentState[], AgentState]> = [
  ['fail/connected without connecting', [], 'connected'],
  ['fail/enrolling twice in a row', ['enrolling'], 'enrolling'],
  ['fail/connected straight to renewing', ['connecting', 'connected'], 'renewing'],
  ['fail/enrolling after connected', ['connecting', 'connected'], 'enrolling'],
  ['fail/revoked during enrollment', ['enrolling'], 'revoked'],
  ['fail/nothing after revoked', ['connecting', 'renewing', 'revoked'], 'connecting'],
  ['fail/nothing after closed', ['closed'], 'initial'],
  ['fail/back to initial', ['connecting'], 'initial'],
];

for (const [name, path, to] of illegal) {
  test(name, (t) => {
    const m = machineIn(path);
    const before = m.state;
    const err = t.throws(() => m.transition(to), { instanceOf: IllegalTransitionError });
    t.is(err?.code, 'ILLEGAL_TRANSITION');
    t.is(m.state, before, 'a refused transition changes nothing');
  });
}

test('ok/the table names only known states, terminal states have no way out, every live state can close', (t) => {
  for (const from of AGENT_STATES) {
    for (const to of TRANSITIONS[from]) t.true(AGENT_STATES.includes(to), `${from} -> ${to}`);
  }
  t.deepEqual(TRANSITIONS.revoked, []);
  t.deepEqual(TRANSITIONS.closed, []);
  for (const s of AGENT_STATES.filter((x) => x !== 'revoked' && x !== 'closed')) t.true(canTransition(s, 'closed'), s);
  t.throws(() => {
    (TRANSITIONS as unknown as Record<string, AgentState[]>).initial = ['connected'];
  });
});

test('ok/listeners see every change with the injected clock', (t) => {
  let now = 1000;
  const m = new AgentStateMachine(() => now);
  const seen: string[] = [];
  const off = m.onChange((c) => seen.push(`${c.from}>${c.to}@${c.at}:${c.reason ?? ''}`));
  now = 2000;
  m.transition('connecting', 'start');
  now = 3000;
  m.transition('connected');
  off();
  m.transition('backoff');
  t.deepEqual(seen, ['initial>connecting@2000:start', 'connecting>connected@3000:']);
  t.is(m.since, 3000);
  t.false(m.terminal);
  m.transition('closed');
  t.true(m.terminal);
});
