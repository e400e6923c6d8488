/**
 * OpenSSH mode says which port sshd listens on (`sshd -T`) and warns when
 * devices are told another one (broker/openssh/sshd-port.ts). The referee is
 * a real sshd on its own port: the broker asks it, and a TCP connect shows
 * that the port devices would be told is indeed refused.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { CaResponse, HealthResponse } from '../../../api/index.js';
import { judgeSshdPort, parseSshdListenPorts } from '../../../broker/openssh/sshd-port.js';
import { withBroker, type TestBroker } from '../../../testkit/broker.js';
import { freePortBlock } from '../../../testkit/gateway.js';
import { DEFAULT_SSHD } from '../../../testkit/sshd-check.js';
import { startSshd, type RunningSshd } from '../../../testkit/sshd.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
const sshdTest = CAN_RUN_SSHD ? test.serial : test.serial.skip;

// --- the rule ----------------------------------------------------------------

test('ok/ports from sshd -T: listenaddress lines, else port lines', (t) => {
  t.deepEqual(parseSshdListenPorts('port 22\naddressfamily any\nlistenaddress [::]:22\nlistenaddress 0.0.0.0:22\n'), [22]);
  t.deepEqual(parseSshdListenPorts('port 2022\nport 22\nlistenaddress 127.0.0.1:2022\nlistenaddress 127.0.0.1:22\n'), [22, 2022]);
  t.deepEqual(parseSshdListenPorts('port 2200\n'), [2200]);
  t.deepEqual(parseSshdListenPorts('port 22\nlistenaddress 192.0.2.1:2201 rdomain 3\n'), [2201]);
  t.deepEqual(parseSshdListenPorts('permitlisten any\nsubsystem sftp internal-sftp\n'), []);
});

test('table/judge: sshd ports against the port devices are told', (t) => {
  const cases: Array<[string, number[], number, boolean, 'SSHD_PORT_MISMATCH' | null, boolean]> = [
    ['ok/same port from ssh.listen', [22, 2222], 2222, false, null, false],
    ['ok/same port from ssh.publicPort', [22], 22, true, null, false],
    ['fail/ssh.listen port, sshd on 22', [22], 2222, false, 'SSHD_PORT_MISMATCH', false],
    ['ok/declared: ssh.publicPort differs (a NAT forwards it)', [22], 443, true, 'SSHD_PORT_MISMATCH', true],
  ];
  for (const [name, ports, told, publicSet, code, declared] of cases) {
    const v = judgeSshdPort(ports, told, publicSet);
    t.is(v.code, code, name);
    t.is(v.declared, declared, name);
  }
  const fix = judgeSshdPort([22], 2222, false).message;
  t.regex(fix, /told port 2222/);
  t.regex(fix, /sshd listens on 22/);
  t.regex(fix, /ssh\.publicPort \(or CERTUNNEL_SSH_PUBLIC_PORT\) to 22/);
});

// --- a real broker and a real sshd ------------------------------------------

async function health(b: TestBroker): Promise<HealthResponse> {
  return b.call<HealthResponse>(b.anonymous, 'GET', '/healthz');
}

/** Log lines (parsed) whose code is CODE. */
function logged(b: TestBroker, code: string): Array<Record<string, unknown>> {
  return b.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.code === code);
}

function connectOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}

async function withSshd<T>(fn: (sshd: RunningSshd, configPath: string) => Promise<T>): Promise<T> {
  const sshd = await startSshd({ config: [] });
  try {
    return await fn(sshd, join(sshd.dir, 'sshd_config'));
  } finally {
    await sshd.stop();
  }
}

sshdTest('fail/sshd listens on another port than devices are told: SSHD_PORT_MISMATCH in the log and /healthz', (t) =>
  withSshd(async (sshd, sshdConfig) => {
    const told = (await freePortBlock(1)).first;
    await withBroker(
      async (b) => {
        const [warning] = logged(b, 'SSHD_PORT_MISMATCH');
        t.truthy(warning, b.logs.join(''));
        t.is(warning!.level, 'warn');
        t.deepEqual(warning!.sshdPorts, [sshd.port]);
        t.is(warning!.devicePort, told);
        t.regex(String(warning!.msg), /ssh\.publicPort \(or CERTUNNEL_SSH_PUBLIC_PORT\)/);
        t.deepEqual(await health(b), { status: 'degraded', problems: ['SSHD_PORT_MISMATCH'] });
        const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
        t.is(ca.ssh.port, told);
        // What a device would meet: nothing on the port it is told, sshd on the other.
        t.is(await connectOutcome(told), 'ECONNREFUSED');
        t.is(await connectOutcome(sshd.port), 'connected');
      },
      { config: { ssh: { mode: 'openssh', listen: `127.0.0.1:${told}`, sshdConfig } } },
    );
  }));

sshdTest('ok/ssh.publicPort names the port sshd listens on: devices are told it, no warning', (t) =>
  withSshd(async (sshd, sshdConfig) => {
    const listen = (await freePortBlock(1)).first;
    await withBroker(
      async (b) => {
        t.deepEqual(logged(b, 'SSHD_PORT_MISMATCH'), []);
        t.true(b.logs.some((l) => l.includes(`sshd listens on port ${sshd.port}, the port devices are told`)));
        t.deepEqual(await health(b), { status: 'ok' });
        t.is((await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca')).ssh.port, sshd.port);
      },
      { config: { ssh: { mode: 'openssh', listen: `127.0.0.1:${listen}`, publicPort: sshd.port, sshdConfig } } },
    );
  }));

sshdTest('ok/ssh.publicPort differs from sshd (a NAT in between): noted, not a problem', (t) =>
  withSshd(async (sshd, sshdConfig) => {
    const nat = (await freePortBlock(1)).first;
    await withBroker(
      async (b) => {
        const [note] = logged(b, 'SSHD_PORT_MISMATCH');
        t.is(note?.level, 'info', 'info, not a warning');
        t.regex(String(note?.msg), /NAT or load balancer/);
        t.deepEqual(await health(b), { status: 'ok' });
      },
      { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:2222', publicPort: nat, sshdConfig } } },
    );
  }));

sshdTest('fail/sshd -T cannot run: SSHD_CHECK_FAILED warning, the broker serves', (t) =>
  withBroker(
    async (b) => {
      const [warning] = logged(b, 'SSHD_CHECK_FAILED');
      t.truthy(warning, b.logs.join(''));
      t.is(warning!.level, 'warn');
      t.regex(String(warning!.reason), /\/nonexistent\/sshd_config/);
      t.deepEqual(await health(b), { status: 'ok' });
    },
    { config: { ssh: { mode: 'openssh', listen: '127.0.0.1:2222', sshdConfig: '/nonexistent/sshd_config' } } },
  ));
