/**
 * A hostile device behind the HTTP proxy, in both SSH modes: its web
 * service (a raw TCP server, hostile-service.ts, behind a real `ssh -R`
 * tunnel) answers with invalid status lines, bad header names and values,
 * oversized and never-ending headers, an early close, broken chunking, an
 * answer before the request ends, a flood of 1xx, refused and malformed
 * upgrades. After each case the operator got a defined answer, and the
 * broker still serves the same device's tunnel and another device.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import type { AuditEventView } from '../../../api/index.js';
import { SESSION_COOKIE } from '../../../broker/proxy/session-cookie.js';
import { CAN_RUN_SSHD, DOMAIN, opensshFleetOptions, withFleet, type Fleet, type FleetOptions } from '../../../testkit/operator-fixture.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { bearer, ca, get } from './helpers.js';
import { flood, startHostileService, type HostileAnswer } from './hostile-service.js';

/** What the operator saw: a status and the broker's error code, or the response cut short. */
type Outcome = { status: number; code?: string; body?: string } | 'cut' | 'no answer';

interface HostileCase {
  readonly name: string;
  readonly answer: HostileAnswer;
  readonly expect: Outcome;
  readonly body?: Buffer;
}

const invalid = { status: 502, code: 'DEVICE_RESPONSE_INVALID' } as const;
const write = (bytes: string): HostileAnswer => (s) => void s.write(bytes, 'latin1');
/** A well-formed (if unusual) answer: the connection goes on as HTTP. */
const writeAndGoOn = (bytes: string): HostileAnswer => (s) => s.write(bytes, 'latin1') || true;

const HTTP_CASES: readonly HostileCase[] = [
  { name: 'bad-reason-phrase', answer: write('HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'status-000', answer: write('HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'status-099', answer: write('HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'status-1000', answer: write('HTTP/1.1 1000 High\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'unasked-101', answer: write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\nraw bytes'), expect: invalid },
  { name: 'not-http', answer: write('SSH-2.0-OpenSSH_9.2\r\n\r\n'), expect: invalid },
  { name: 'bad-header-name', answer: write('HTTP/1.1 200 OK\r\nX(evil): 1\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'bad-header-value', answer: write('HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'bare-lf-in-header', answer: write('HTTP/1.1 200 OK\r\nX-Evil: a\nSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok'), expect: invalid },
  { name: 'content-length-and-chunked', answer: write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n'), expect: invalid },
  { name: 'oversized-header', answer: write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(100_000)}\r\nContent-Length: 2\r\n\r\nok`), expect: invalid },
  { name: 'never-ending-headers', answer: (s) => {
      s.write('HTTP/1.1 200 OK\r\n');
      flood(s, 'X-More: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n');
    }, expect: invalid },
  { name: 'flood-of-1xx', answer: (s) => flood(s, 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'), expect: invalid },
  { name: 'a-few-1xx-then-200', answer: writeAndGoOn('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal'), expect: { status: 200, body: 'final' } },
  { name: 'close-before-answer', answer: (s) => void s.destroy(), expect: { status: 502, code: 'DEVICE_SERVICE_UNAVAILABLE' } },
  { name: 'close-mid-body', answer: (s) => void s.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort'), expect: 'cut' },
  { name: 'broken-chunking', answer: write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nevil\r\n'), expect: 'cut' },
  {
    name: 'answer-before-request-ends', body: randomBytes(4 * 1024 * 1024),
    answer: (s) => void s.end('HTTP/1.1 413 Too Big\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly'), expect: { status: 413, body: 'early' },
  },
];

/** Settles within MS, or 'no answer'. */
async function within(ms: number, outcome: Promise<Outcome>): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Outcome>((resolve) => (timer = setTimeout(() => resolve('no answer'), ms)));
  try {
    return await Promise.race([outcome, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function operatorSees(f: Fleet, c: HostileCase, auth: Record<string, string>): Promise<Outcome> {
  const request = get(f, 'hostile', { method: c.body ? 'POST' : 'GET', path: `/case/${c.name}`, headers: auth, body: c.body }).then(
    (r): Outcome => {
      const code = r.headers['x-certunnel-error'] as string | undefined;
      return code ? { status: r.status, code } : { status: r.status, body: r.body };
    },
    (): Outcome => 'cut',
  );
  return within(20_000, request);
}

/** The broker still relays for the same device (its tunnel up) and for a well-behaved one. */
async function stillServes(t: ExecutionContext, f: Fleet, auth: Record<string, string>, after: string): Promise<void> {
  const same = await within(20_000, get(f, 'hostile', { path: '/ok', headers: auth }).then((r): Outcome => ({ status: r.status, body: r.body }), () => 'cut'));
  t.deepEqual(same, { status: 200, body: 'ok' }, `after ${after}: the hostile device's tunnel still serves`);
  const other = await get(f, 'good', { headers: auth });
  t.is(other.status, 200, `after ${after}: another device is still served`);
}

interface RawExchange {
  readonly text: string;
  readonly closed: boolean;
}

/**
 * An Upgrade request for /case/NAME over TLS by hand; once the response
 * head arrived, writes THEN (a request the device must never see). Ends
 * when the broker closes, when DONE says so, or after 15 s.
 */
async function rawUpgrade(f: Fleet, auth: Record<string, string>, name: string, then: string, done: (text: string) => boolean): Promise<RawExchange> {
  const socket = tlsConnect({ host: '127.0.0.1', port: f.b.broker.apiPort, servername: `hostile.${DOMAIN}`, ca: await ca(f) });
  let text = '';
  let wrote = false;
  return new Promise((resolve) => {
    const finish = (closed: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ text, closed });
    };
    const timer = setTimeout(() => finish(false), 15_000);
    socket.once('secureConnect', () =>
      socket.write(`GET /case/${name} HTTP/1.1\r\nHost: hostile.${DOMAIN}\r\nAuthorization: ${auth.authorization}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`),
    );
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (!wrote && text.includes('\r\n\r\n')) {
        wrote = true;
        socket.write(then);
      }
      if (done(text)) finish(false);
    });
    socket.once('close', () => finish(true));
    socket.on('error', () => undefined);
  });
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: hostile\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n';

const UPGRADE_ANSWERS: Readonly<Record<string, HostileAnswer>> = {
  // Refuses the upgrade and keeps the connection as HTTP: anything more the client writes would be a request past the broker.
  'refuse-upgrade': (s) => {
    s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nContent-Type: text/plain\r\n\r\nnope');
    return true;
  },
  'bad-101': write('HTTP/1.1 101 Swi\x01tching\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'),
  '101-sets-broker-cookie': write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSet-Cookie: ${SESSION_COOKIE}=evil; Path=/; Secure\r\nX-Device: hostile\r\n\r\n`),
};

async function upgradeCases(t: ExecutionContext, f: Fleet, auth: Record<string, string>, seen: readonly string[]): Promise<void> {
  const refused = await rawUpgrade(f, auth, 'refuse-upgrade', SMUGGLED, () => false);
  t.regex(refused.text, /^HTTP\/1\.1 403 Forbidden\r\n/);
  t.true(refused.text.endsWith('\r\n\r\nnope'), refused.text);
  t.true(refused.closed, 'refuse-upgrade: the broker closes the connection after a refused upgrade');
  t.false(seen.includes('GET /smuggled'), 'refuse-upgrade: no request past the broker reaches the device');
  await stillServes(t, f, auth, 'refuse-upgrade');

  const bad = await rawUpgrade(f, auth, 'bad-101', '', () => false);
  t.regex(bad.text, /^HTTP\/1\.1 502 /);
  t.regex(bad.text, /\r\nx-certunnel-error: DEVICE_RESPONSE_INVALID\r\n/i);
  t.true(bad.closed);
  await stillServes(t, f, auth, 'bad-101');

  const cookie = await rawUpgrade(f, auth, '101-sets-broker-cookie', '', (text) => text.includes('\r\n\r\n'));
  t.regex(cookie.text, /^HTTP\/1\.1 101 /);
  t.regex(cookie.text, /\r\nX-Device: hostile\r\n/i);
  t.false(cookie.text.toLowerCase().includes(SESSION_COOKIE.toLowerCase()), 'a device cannot set the broker\'s session cookie through a 101');
  await stillServes(t, f, auth, '101-sets-broker-cookie');
}

async function runHostileCases(t: ExecutionContext, options: FleetOptions): Promise<void> {
  const answers: Record<string, HostileAnswer> = { ...UPGRADE_ANSWERS };
  for (const c of HTTP_CASES) answers[c.name] = c.answer;
  const hostile = await startHostileService(answers);
  t.teardown(() => hostile.close());
  await withFleet(async (f) => {
    const dev = await f.enroll('hostile', { connect: true, httpTarget: hostile.port });
    await f.enroll('good', { connect: true });
    const auth = await bearer(f);
    await stillServes(t, f, auth, 'nothing');
    for (const c of HTTP_CASES) {
      const seen = await operatorSees(f, c, auth);
      t.log(c.name, seen);
      t.deepEqual(seen, c.expect, c.name);
      await stillServes(t, f, auth, c.name);
    }
    await upgradeCases(t, f, auth, hostile.seen);
    // Audited, once per device and window (a device cannot flood the audit trail by answering badly).
    let events: AuditEventView[] = [];
    await waitFor(async () => {
      events = (await f.b.call<{ items: AuditEventView[] }>(f.b.admin, 'GET', '/v1/audit?action=proxy.device_response')).items;
      return events.length > 0;
    }, 'the audit event');
    t.is(events.length, 1);
    t.like(events[0], { actor: `device:${dev.grant.deviceId}`, target: dev.grant.deviceId, outcome: 'DEVICE_RESPONSE_INVALID' });
    t.is(typeof events[0]!.details.reason, 'string');
  }, options);
}

test('hostile/embedded gateway: every hostile answer gets a defined outcome, the broker and the tunnel stay up, audited', (t) => runHostileCases(t, {}));

(CAN_RUN_SSHD ? test : test.skip)('hostile/OpenSSH mode: every hostile answer gets a defined outcome, the broker and the tunnel stay up, audited', async (t) =>
  runHostileCases(t, await opensshFleetOptions()));
