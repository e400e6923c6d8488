/** agent/transport-openssh.ts (the system ssh client) against the embedded gateway and a real sshd (cases in transport-cases.ts). */
import test from 'ava';
import { classifySshStderr, opensshArgs } from '../../agent/transport-openssh.js';
import { createOpensshTransport } from '../../agent/transport-openssh.js';
import { generateKeyPair } from '../../ca/index.js';
import { registerTransportCases } from './transport-cases.js';

registerTransportCases(test, createOpensshTransport());

test('openssh: the command line: no system config, strict known_hosts, forward failure exits, keepalives, loopback binds', (t) => {
  const args = opensshArgs({
    host: 'broker.example', port: 2222, username: 'tunnel', key: generateKeyPair(), keyPath: '/s/device_key', certificateLine: 'x',
    certificatePath: '/s/device_key-cert.pub', hostKey: generateKeyPair().publicKey, knownHostsPath: '/s/known_hosts', bindAddress: '10.0.0.2',
    forwards: [{ name: 'ssh', remotePort: 20000, localHost: '127.0.0.1', localPort: 22 }, { name: 'web', remotePort: 20001, localHost: '::1', localPort: 80 }],
    keepaliveIntervalMs: 15_000, keepaliveCountMax: 3, connectTimeoutMs: 20_000,
  });
  const line = args.join(' ');
  for (const option of ['-N', '-F /dev/null', '-o ExitOnForwardFailure=yes', '-o ServerAliveInterval=15', '-o ServerAliveCountMax=3',
    '-o StrictHostKeyChecking=yes', '-o UserKnownHostsFile=/s/known_hosts', '-o GlobalKnownHostsFile=/dev/null', '-o UpdateHostKeys=no',
    '-o CertificateFile=/s/device_key-cert.pub', '-i /s/device_key', '-o BatchMode=yes', '-o IdentitiesOnly=yes',
    '-R 127.0.0.1:20000:127.0.0.1:22', '-R 127.0.0.1:20001:[::1]:80', '-b 10.0.0.2', '-p 2222', '-l tunnel']) {
    t.true(line.includes(option), option);
  }
  t.deepEqual(args.slice(-2), ['--', 'broker.example'], 'the host comes last, after --');
});

const stderrCases: Array<[string, string[], string | undefined]> = [
  ['host key', ['debug1: x', 'Host key verification failed.'], 'HOST_KEY_MISMATCH'],
  ['changed key', ['@@@@@@@', '@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @'], 'HOST_KEY_MISMATCH'],
  ['auth', ['tunnel@127.0.0.1: Permission denied (publickey).'], 'AUTH_REFUSED'],
  ['forward', ['Error: remote port forwarding failed for listen port 20000'], 'FORWARD_REFUSED'],
  ['keepalive', ['Timeout, server 127.0.0.1 not responding.'], 'KEEPALIVE_TIMEOUT'],
  ['refused', ['ssh: connect to host 127.0.0.1 port 2222: Connection refused'], 'UNREACHABLE'],
  ['closed', ['Connection to 127.0.0.1 closed by remote host.'], 'DISCONNECTED'],
  ['debug lines are ignored', ['debug1: connect_next: connect to 127.0.0.1 port 80: Connection refused'], undefined],
];
for (const [name, lines, code] of stderrCases) {
  test(`openssh: stderr classification: ${name}`, (t) => {
    t.is<string | undefined, string | undefined>(classifySshStderr(lines)?.code, code);
  });
}
