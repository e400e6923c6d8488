/**
 * How `certunnel ssh` explains a failed broker hop, from what OpenSSH's
 * client writes to stderr (strings as OpenSSH 9.2 prints them), and the
 * shell quoting of the ProxyCommand it builds.
 */
import test from 'ava';
import { explainHopFailure, shellQuote } from '../../cli/ssh-commands.js';
import type { OperatorCertificateResponse } from '../../api/index.js';

const NOW = new Date('2026-03-01T10:00:00Z');
const grant: OperatorCertificateResponse = {
  certificate: 'ssh-ed25519-cert-v01@openssh.com AAAA',
  serial: '7',
  principal: 'reach-20000-20001',
  validAfter: '2026-03-01T09:59:00Z',
  validBefore: '2026-03-01T10:10:00Z',
  device: { id: 'dev_aaaaaaaaaaaaaaaa', name: 'kiosk-42', ports: { first: 20000, last: 20001 }, forwardedPorts: [20000] },
  ssh: { host: 'broker.example', port: 2222, username: 'operator', hostKey: 'ssh-ed25519 AAAA', hostCertificateAuthority: 'ssh-ed25519 BBBB' },
};

const cases: Array<[name: string, log: string, port: number, now: Date, code: string | undefined, message?: RegExp]> = [
  ['fail/host-key', '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n…\nHost key verification failed.\n', 20000, NOW, 'BROKER_HOST_KEY_MISMATCH'],
  ['fail/certificate-refused', 'operator@broker.example: Permission denied (publickey).\n', 20000, NOW, 'CERTIFICATE_REFUSED', /valid until 2026-03-01T10:10:00Z/],
  ['fail/certificate-expired-refused', 'operator@broker.example: Permission denied (publickey).\n', 20000, new Date('2026-03-01T10:11:00Z'), 'CERTIFICATE_REFUSED', /it expired at 2026-03-01T10:10:00Z/],
  ['fail/other-block', 'channel 0: open failed: connect failed: \nstdio forwarding failed\n', 20004, NOW, 'REACH_REFUSED', /port 20004: the certificate for kiosk-42 reaches its block 20000-20001 only/],
  ['fail/own-port-not-forwarded', 'channel 0: open failed: administratively prohibited: open failed\nstdio forwarding failed\n', 20001, NOW, 'REACH_REFUSED', /its tunnel does not forward it/],
  ['fail/unreachable', 'ssh: connect to host broker.example port 2222: Connection refused\n', 20000, NOW, 'BROKER_UNREACHABLE', /Connection refused/],
  ['fail/session-ended-at-expiry', 'Connection to broker.example closed by remote host.\n', 20000, new Date('2026-03-01T10:10:01Z'), 'CERTIFICATE_EXPIRED'],
  ['ok/clean-hop', '', 20000, NOW, undefined],
];

for (const [name, log, port, now, code, message] of cases) {
  test(`hop ${name}`, (t) => {
    const err = explainHopFailure(log, grant, port, now);
    t.is(err?.code, code);
    if (err) t.is(err.exitCode, 255);
    if (message) t.regex(err!.message, message);
  });
}

test('shellQuote: plain words stay, anything else is single-quoted safely', (t) => {
  t.is(shellQuote('/usr/bin/ssh'), '/usr/bin/ssh');
  t.is(shellQuote('UserKnownHostsFile=/tmp/a b'), "'UserKnownHostsFile=/tmp/a b'");
  t.is(shellQuote("it's"), "'it'\\''s'");
  t.is(shellQuote('$(reboot)'), "'$(reboot)'");
});
