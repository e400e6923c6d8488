/**
 * The gateway's pure decisions (broker/ssh/authorize.ts, userauth.ts), table-driven.
 */
import test from 'ava';
import { sign } from 'node:crypto';
import {
  SshWriter,
  formatPublicKey,
  generateKeyPair,
  parseCertificate,
  signCertificate,
  signDeviceCert,
  signHostCert,
  signOperatorCert,
  type Certificate,
  type CertificateFields,
} from '../../../ca/index.js';
import {
  authorizeChannel,
  authorizeDirectTcpip,
  authorizeForward,
  authorizeGlobalRequest,
  authorizeReach,
  authorizeTakeover,
  checkDeviceCertificate,
  checkUserCertificate,
  resolveNamedTarget,
  type CertificateCheckDeps,
  type PortHolder,
  type SessionRef,
} from '../../../broker/ssh/authorize.js';
import { decideUserauth, unwrapSessionSignature } from '../../../broker/ssh/userauth.js';

const OWN = 'ports-20000-20001';

const forwardCases: [name: string, principal: string, bindAddr: string, bindPort: number, expected: string][] = [
  ['ok/own-port', OWN, '127.0.0.1', 20000, 'allow'],
  ['ok/own-second-port', OWN, '127.0.0.1', 20001, 'allow'],
  ['fail/other-device-port', OWN, '127.0.0.1', 20002, 'PORT_NOT_OWNED'],
  ['fail/port-below-block', OWN, '127.0.0.1', 19999, 'PORT_NOT_OWNED'],
  ['fail/localhost', OWN, 'localhost', 20000, 'BIND_ADDRESS'],
  ['fail/0.0.0.0', OWN, '0.0.0.0', 20000, 'BIND_ADDRESS'],
  ['fail/::', OWN, '::', 20000, 'BIND_ADDRESS'],
  ['fail/::1', OWN, '::1', 20000, 'BIND_ADDRESS'],
  ['fail/empty-address', OWN, '', 20000, 'BIND_ADDRESS'],
  ['fail/star', OWN, '*', 20000, 'BIND_ADDRESS'],
  ['fail/other-loopback', OWN, '127.0.0.2', 20000, 'BIND_ADDRESS'],
  ['fail/port-zero', OWN, '127.0.0.1', 0, 'PORT_ZERO'],
  ['fail/not-an-integer', OWN, '127.0.0.1', 20000.5, 'PORT_NOT_OWNED'],
  ['fail/operator', 'reach-20000-20001', '127.0.0.1', 20000, 'NOT_A_DEVICE'],
  ['fail/malformed-principal', 'ports-20001-20000', '127.0.0.1', 20000, 'NOT_A_DEVICE'],
  ['fail/no-principal', '', '127.0.0.1', 20000, 'NOT_A_DEVICE'],
];

for (const [name, principal, bindAddr, bindPort, expected] of forwardCases) {
  test(`authorizeForward ${name}`, (t) => {
    const d = authorizeForward(principal, { bindAddr, bindPort });
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

const session = (id: number, role: 'device' | 'operator', deviceId: string): SessionRef => ({ id, identity: { role, deviceId } });

// The claimant's forward is already allowed (authorizeForward); HOLDER holds, or is binding, the port.
const takeoverCases: [name: string, claimant: SessionRef, holder: SessionRef, expected: string][] = [
  ['ok/reconnect-takes-over-older-session', session(7, 'device', 'dev-1'), session(3, 'device', 'dev-1'), 'allow'],
  ['fail/same-session', session(7, 'device', 'dev-1'), session(7, 'device', 'dev-1'), 'PORT_IN_USE'],
  ['fail/newer-session-holds', session(3, 'device', 'dev-1'), session(7, 'device', 'dev-1'), 'PORT_IN_USE'],
  ['fail/other-device-holds', session(7, 'device', 'dev-1'), session(3, 'device', 'dev-2'), 'PORT_IN_USE'],
  ['fail/operator-holds', session(7, 'device', 'dev-1'), session(3, 'operator', 'dev-1'), 'PORT_IN_USE'],
  ['fail/operator-claims', session(7, 'operator', 'dev-1'), session(3, 'device', 'dev-1'), 'PORT_IN_USE'],
];

for (const [name, claimant, holder, expected] of takeoverCases) {
  test(`authorizeTakeover ${name}`, (t) => {
    const d = authorizeTakeover(claimant, holder);
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

const holder = (role: 'device' | 'operator', listening: number[], closed = false): PortHolder => ({ identity: { role }, closed, forwards: new Set(listening) });

// The operator's direct-tcpip is already within its block (authorizeDirectTcpip); the port asked is 20000.
const reachCases: [name: string, holder: PortHolder | undefined, expected: string][] = [
  ['ok/live-tunnel-listens', holder('device', [20000, 20001]), 'allow'],
  ['fail/no-tunnel', undefined, 'TUNNEL_NOT_CONNECTED'],
  ['fail/port-still-binding', holder('device', [20001]), 'TUNNEL_NOT_CONNECTED'],
  ['fail/session-closing', holder('device', [20000], true), 'TUNNEL_NOT_CONNECTED'],
  ['fail/not-a-device', holder('operator', [20000]), 'TUNNEL_NOT_CONNECTED'],
];

for (const [name, owner, expected] of reachCases) {
  test(`authorizeReach ${name}`, (t) => {
    const d = authorizeReach(owner, 20000);
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

const channelCases: [name: string, role: 'device' | 'operator', kind: string, expected: string][] = [
  ['fail/device-session', 'device', 'session', 'SESSION_PROHIBITED'],
  ['fail/device-exec', 'device', 'exec', 'SESSION_PROHIBITED'],
  ['fail/device-shell', 'device', 'shell', 'SESSION_PROHIBITED'],
  ['fail/device-pty', 'device', 'pty-req', 'SESSION_PROHIBITED'],
  ['fail/device-subsystem', 'device', 'subsystem', 'SESSION_PROHIBITED'],
  ['fail/device-env', 'device', 'env', 'SESSION_PROHIBITED'],
  ['fail/device-agent', 'device', 'auth-agent-req@openssh.com', 'AGENT_PROHIBITED'],
  ['fail/device-x11', 'device', 'x11-req', 'X11_PROHIBITED'],
  ['fail/device-streamlocal', 'device', 'direct-streamlocal@openssh.com', 'STREAMLOCAL_PROHIBITED'],
  ['fail/device-direct-tcpip', 'device', 'direct-tcpip', 'DIRECT_TCPIP_PROHIBITED'],
  ['fail/device-unknown', 'device', 'tun@openssh.com', 'UNKNOWN_CHANNEL'],
  ['fail/device-prototype-name', 'device', 'constructor', 'UNKNOWN_CHANNEL'],
  ['ok/operator-direct-tcpip', 'operator', 'direct-tcpip', 'allow'],
  ['fail/operator-session', 'operator', 'session', 'SESSION_PROHIBITED'],
  ['fail/operator-unknown', 'operator', 'tun@openssh.com', 'UNKNOWN_CHANNEL'],
];

for (const [name, role, kind, expected] of channelCases) {
  test(`authorizeChannel ${name}`, (t) => {
    const d = authorizeChannel(role, kind);
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

const directCases: [name: string, principal: string, destAddr: string, destPort: number, expected: string][] = [
  ['ok/own-device-port', 'reach-20000-20001', '127.0.0.1', 20001, 'allow'],
  ['fail/other-device-port', 'reach-20000-20001', '127.0.0.1', 20002, 'PORT_NOT_OWNED'],
  ['fail/other-host', 'reach-20000-20001', '10.0.0.1', 20000, 'DEST_ADDRESS'],
  ['fail/localhost', 'reach-20000-20001', 'localhost', 20000, 'DEST_ADDRESS'],
  ['fail/port-zero', 'reach-20000-20001', '127.0.0.1', 0, 'PORT_ZERO'],
  ['fail/device', OWN, '127.0.0.1', 20000, 'NOT_AN_OPERATOR'],
];

for (const [name, principal, destAddr, destPort, expected] of directCases) {
  test(`authorizeDirectTcpip ${name}`, (t) => {
    const d = authorizeDirectTcpip(principal, { destAddr, destPort });
    t.is(d.allow ? 'allow' : d.reason, expected);
  });
}

// `ssh -W kiosk-42:PORT` by the operator of dev-1 (block 20000-20001): the device as resolved from the name.
const namedCases: [name: string, device: { deviceId: string; block: { first: number; last: number } } | undefined, destPort: number, expected: string][] = [
  ['ok/port-of-the-block', { deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, 20001, '127.0.0.1:20001'],
  ['ok/ssh-service-port-is-slot-0', { deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, 22, '127.0.0.1:20000'],
  ['ok/http-service-port-is-slot-1', { deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, 80, '127.0.0.1:20001'],
  ['fail/unknown-device', undefined, 22, 'DEVICE_UNKNOWN'],
  ['fail/other-device', { deviceId: 'dev-2', block: { first: 20002, last: 20003 } }, 22, 'OTHER_DEVICE'],
  ['fail/same-id-other-block', { deviceId: 'dev-1', block: { first: 20002, last: 20003 } }, 22, 'OTHER_DEVICE'],
  ['fail/port-outside-block', { deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, 20002, 'PORT_NOT_OWNED'],
  ['fail/other-service-port', { deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, 443, 'PORT_NOT_OWNED'],
];

for (const [name, device, destPort, expected] of namedCases) {
  test(`resolveNamedTarget ${name}`, (t) => {
    const d = resolveNamedTarget({ deviceId: 'dev-1', block: { first: 20000, last: 20001 } }, device, destPort);
    t.is(d.allow ? `${d.destAddr}:${d.destPort}` : d.reason, expected);
  });
}

test('resolveNamedTarget: a one-port block has no http slot', (t) => {
  const block = { first: 20000, last: 20000 };
  const d = resolveNamedTarget({ deviceId: 'dev-1', block }, { deviceId: 'dev-1', block }, 80);
  t.deepEqual(d, { allow: false, reason: 'PORT_NOT_OWNED' });
});

test('authorizeGlobalRequest allows only tcpip-forward and its cancel', (t) => {
  const verdict = (name: string): string => {
    const d = authorizeGlobalRequest(name);
    return d.allow ? 'allow' : d.reason;
  };
  t.is(verdict('tcpip-forward'), 'allow');
  t.is(verdict('cancel-tcpip-forward'), 'allow');
  t.is(verdict('streamlocal-forward@openssh.com'), 'STREAMLOCAL_PROHIBITED');
  t.is(verdict('hostkeys-prove-00@openssh.com'), 'UNKNOWN_REQUEST');
});

// ---------------------------------------------------------------------------
// Certificates

const NOW = new Date('2026-11-25T12:00:00Z');
const nowS = BigInt(NOW.getTime() / 1000);
const ca = generateKeyPair();
const otherCa = generateKeyPair();
const deviceKey = generateKeyPair();
const block = { first: 20000, last: 20001 };
const revoked = new Set<bigint>([666n]);
const deps: CertificateCheckDeps = { trustedCaKeys: [ca.publicKey], isRevoked: (c) => revoked.has(c.serial) };

function device(overrides: Partial<Parameters<typeof signDeviceCert>[0]> = {}): Certificate {
  return signDeviceCert({ ca, publicKey: deviceKey.publicKey, deviceId: 'dev-1', ports: block, serial: 42n, now: NOW, ...overrides });
}

/** Signs arbitrary fields (bypassing the profiles) to reach the checks the profiles would prevent. */
function raw(overrides: Partial<CertificateFields>): Certificate {
  return signCertificate({
    type: 'user', publicKey: deviceKey.publicKey, serial: 43n, keyId: 'device:dev-1', principals: ['ports-20000-20001'],
    validAfter: nowS - 60n, validBefore: nowS + 3600n, criticalOptions: {}, extensions: { 'permit-port-forwarding': '' },
    ...overrides,
  }, ca);
}

function tamperPrincipal(cert: Certificate): Buffer {
  const blob = Buffer.from(cert.blob);
  const at = blob.indexOf('ports-20000');
  blob[at + 10] = '1'.charCodeAt(0); // ports-20001-20001: still well-formed, no longer signed
  return blob;
}

const certCases: [name: string, blob: () => Buffer, expected: string][] = [
  ['ok/device', () => device().blob, 'device:dev-1'],
  ['ok/operator', () => signOperatorCert({ ca, publicKey: deviceKey.publicKey, operator: 'alice', deviceId: 'dev-1', ports: block, serial: 7n, now: NOW }).blob, 'operator:alice'],
  ['fail/expired', () => device({ now: new Date(NOW.getTime() - 2 * 3600_000) }).blob, 'CERT_EXPIRED'],
  ['fail/not-yet-valid', () => device({ now: new Date(NOW.getTime() + 3600_000) }).blob, 'CERT_NOT_YET_VALID'],
  ['fail/other-ca', () => device({ ca: otherCa }).blob, 'CERT_UNKNOWN_CA'],
  ['fail/revoked', () => device({ serial: 666n }).blob, 'REVOKED'],
  ['fail/host-cert', () => signHostCert({ hostCa: ca, publicKey: deviceKey.publicKey, hostnames: ['device'], serial: 9n, now: NOW }).blob, 'CERT_WRONG_TYPE'],
  ['fail/tampered-principal', () => tamperPrincipal(device()), 'CERT_BAD_SIGNATURE'],
  ['fail/truncated', () => device().blob.subarray(0, 100), 'CERT_MALFORMED'],
  ['fail/plain-key-blob', () => new SshWriter().string('ssh-ed25519').string(deviceKey.publicKey).toBuffer(), 'CERT_MALFORMED'],
  ['fail/key-id-not-device', () => raw({ keyId: 'host:dev-1' }).blob, 'KEY_ID_INVALID'],
  ['fail/key-id-bad-characters', () => raw({ keyId: 'device:dev 1' }).blob, 'KEY_ID_INVALID'],
  ['fail/two-principals', () => raw({ principals: ['ports-20000-20001', 'ports-20002-20003'] }).blob, 'PRINCIPAL_INVALID'],
  ['fail/no-principal', () => raw({ principals: [] }).blob, 'PRINCIPAL_INVALID'],
  ['fail/reach-principal-on-device-key-id', () => raw({ principals: ['reach-20000-20001'] }).blob, 'PRINCIPAL_INVALID'],
  ['fail/login-principal', () => raw({ principals: ['root'] }).blob, 'PRINCIPAL_INVALID'],
  ['fail/no-port-forwarding-extension', () => raw({ extensions: {} }).blob, 'FORWARDING_NOT_PERMITTED'],
  ['fail/critical-option', () => raw({ criticalOptions: { 'force-command': '/bin/true' } }).blob, 'CERT_UNKNOWN_CRITICAL_OPTION'],
  // Defence in depth (issue 12 item 12): what the CA profile never signs is refused at login too.
  ['fail/serial-zero', () => raw({ serial: 0n }).blob, 'SERIAL_ZERO'],
  ['fail/device-validity-over-profile-max', () => raw({ validBefore: nowS + 8n * 86400n }).blob, 'VALIDITY_TOO_LONG'],
  ['fail/device-valid-forever', () => raw({ validAfter: 0n, validBefore: (1n << 64n) - 1n }).blob, 'VALIDITY_TOO_LONG'],
  ['ok/device-validity-at-profile-max', () => raw({ validBefore: nowS + 7n * 86400n }).blob, 'device:dev-1'],
  ['fail/operator-validity-over-profile-max', () => raw({ keyId: 'operator:alice:device:dev-1', principals: ['reach-20000-20001'], validBefore: nowS + 2n * 3600n }).blob, 'VALIDITY_TOO_LONG'],
];

for (const [name, blob, expected] of certCases) {
  test(`checkUserCertificate ${name}`, (t) => {
    const check = checkUserCertificate(blob(), NOW, deps);
    if (check.ok) {
      const { identity } = check;
      t.is(identity.role === 'device' ? `device:${identity.deviceId}` : `operator:${identity.operator}`, expected);
      t.deepEqual(identity.block, block);
    } else {
      t.is(check.reason as string, expected);
    }
  });
}

test('checkDeviceCertificate returns the device id and its block', (t) => {
  const check = checkDeviceCertificate(device(), NOW, deps);
  t.true(check.ok);
  if (check.ok) {
    t.is(check.identity.deviceId, 'dev-1');
    t.deepEqual(check.identity.block, block);
    t.is(check.identity.serial, 42n);
  }
});

test('checkDeviceCertificate refuses an operator certificate', (t) => {
  const cert = signOperatorCert({ ca, publicKey: deviceKey.publicKey, operator: 'alice', deviceId: 'dev-1', ports: block, serial: 7n, now: NOW });
  const check = checkDeviceCertificate(cert, NOW, deps);
  t.deepEqual(check, { ok: false, reason: 'PRINCIPAL_INVALID' });
});

test('checkDeviceCertificate asks isRevoked with serial and key id, after the signature', (t) => {
  const asked: unknown[] = [];
  const spy: CertificateCheckDeps = { trustedCaKeys: [ca.publicKey], isRevoked: (c) => (asked.push(c), false) };
  t.true(checkDeviceCertificate(device(), NOW, spy).ok);
  t.deepEqual(asked, [{ serial: 42n, keyId: 'device:dev-1' }]);
  asked.length = 0;
  t.false(checkUserCertificate(tamperPrincipal(device()), NOW, spy).ok);
  t.deepEqual(asked, [], 'an unsigned certificate never reaches the revocation check');
});

// ---------------------------------------------------------------------------
// Userauth decisions (RFC 4252)

const sessionData = Buffer.from('session id + USERAUTH_REQUEST up to the signature');
const rawSig = sign(null, sessionData, deviceKey.privateKey);
const wrapped = new SshWriter().string('ssh-ed25519').string(rawSig).toBuffer();

function decide(req: Parameters<typeof decideUserauth>[0]): string {
  const d = decideUserauth(req, NOW, deps);
  return d.kind === 'refuse' ? d.reason : d.kind === 'accept' ? `accept/${d.signatureForm}` : d.kind;
}

const pk = (extra: object = {}): Parameters<typeof decideUserauth>[0] => ({
  method: 'publickey', keyAlgo: 'ssh-ed25519-cert-v01@openssh.com', keyBlob: device().blob, ...extra,
});

const userauthCases: [name: string, req: () => Parameters<typeof decideUserauth>[0], expected: string][] = [
  ['ok/none-lists-methods', () => ({ method: 'none' }), 'list-methods'],
  ['ok/query-phase', () => pk(), 'key-acceptable'],
  ['ok/wrapped-signature', () => pk({ signature: wrapped, signedData: sessionData }), 'accept/wrapped'],
  ['ok/bare-signature', () => pk({ signature: rawSig, signedData: sessionData }), 'accept/bare'],
  ['fail/password', () => ({ method: 'password' }), 'METHOD_NOT_ALLOWED'],
  ['fail/keyboard-interactive', () => ({ method: 'keyboard-interactive' }), 'METHOD_NOT_ALLOWED'],
  ['fail/hostbased', () => ({ method: 'hostbased' }), 'METHOD_NOT_ALLOWED'],
  ['fail/plain-key', () => pk({ keyAlgo: 'ssh-ed25519', keyBlob: Buffer.from(formatPublicKey(deviceKey.publicKey).split(' ')[1]!, 'base64') }), 'NOT_A_CERTIFICATE'],
  ['fail/rsa-cert', () => pk({ keyAlgo: 'ssh-rsa-cert-v01@openssh.com' }), 'CERT_UNSUPPORTED'],
  ['fail/expired-in-query-phase', () => pk({ keyBlob: device({ now: new Date(NOW.getTime() - 2 * 3600_000) }).blob }), 'CERT_EXPIRED'],
  ['fail/signature-over-other-data', () => pk({ signature: wrapped, signedData: Buffer.from('other session') }), 'BAD_SESSION_SIGNATURE'],
  ['fail/signature-by-other-key', () => pk({ signature: sign(null, sessionData, generateKeyPair().privateKey), signedData: sessionData }), 'BAD_SESSION_SIGNATURE'],
  ['fail/signature-wrapped-as-cert-algorithm', () => pk({ signature: new SshWriter().string('ssh-rsa').string(rawSig).toBuffer(), signedData: sessionData }), 'BAD_SESSION_SIGNATURE'],
  ['fail/signature-trailing-bytes', () => pk({ signature: Buffer.concat([wrapped, Buffer.from([0])]), signedData: sessionData }), 'BAD_SESSION_SIGNATURE'],
];

for (const [name, req, expected] of userauthCases) {
  test(`decideUserauth ${name}`, (t) => {
    t.is(decide(req()), expected);
  });
}

test('unwrapSessionSignature: bare 64 bytes and the RFC 8709 wrapper give the same signature', (t) => {
  t.deepEqual(unwrapSessionSignature(rawSig), { raw: rawSig, form: 'bare' });
  const unwrapped = unwrapSessionSignature(wrapped);
  t.is(unwrapped?.form, 'wrapped');
  t.true(unwrapped?.raw.equals(rawSig));
  t.is(unwrapSessionSignature(Buffer.alloc(10)), undefined);
});

test('a parsed certificate round-trips through the blob the client presents', (t) => {
  t.is(parseCertificate(device().blob).keyId, 'device:dev-1');
});
