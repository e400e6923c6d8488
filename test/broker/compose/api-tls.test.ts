/**
 * The API's TLS (issue #14) with real TLS clients (node:tls with the pin
 * compared by hand, and curl --pinnedpubkey): the snapshot's identity by
 * default, a rotation's next by SNI `<pin>.pin.certunnel.invalid`, the
 * switch at commit without a restart and without touching open connections,
 * the retired identity by its SNI name for the renew grace period; the
 * self-signed certificate renewed with the same key before it ends; an
 * operator's certificate never replaced but warned about.
 */
import test from 'ava';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect, type TLSSocket } from 'node:tls';
import forge from 'node-forge';
import { ApiError, apiRequest, pinServerName, type HealthResponse } from '../../../api/index.js';
import { tlsPinOfSpki } from '../../../ca/index.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { runCommand } from '../../../testkit/openssh.js';
import { dataDirTrust, nextTlsIdentity, TEST_HOSTNAMES, tlsIdentityOf, type SettableTrustRoots } from '../../../testkit/trust.js';
import { issueSelfSignedCertificate } from '../../../broker/compose/tls.js';
import { staticTrustRoots, type TrustSnapshot } from '../../../broker/core/trust-roots.js';

function handshake(port: number, servername?: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, checkServerIdentity: () => undefined });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** The pin of the key the API presents to a handshake with SERVERNAME (none: the default). */
async function presentedPin(b: TestBroker, servername?: string): Promise<string> {
  const socket = await handshake(b.broker.apiPort, servername);
  try {
    return tlsPinOfSpki(socket.getPeerCertificate().pubkey!);
  } finally {
    socket.destroy();
  }
}

/** GET /healthz over an already open TLS SOCKET (HTTP/1.1, the connection kept). */
function healthOver(socket: TLSSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('utf8');
      if (/\r\n\r\n[\s\S]*\}/.test(text)) {
        socket.off('data', onData);
        resolve(text);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  });
}

interface Rig {
  roots: SettableTrustRoots;
  initial: TrustSnapshot;
}

function withTlsBroker(fn: (b: TestBroker, rig: Rig) => Promise<void>, initial?: (dir: string, base: TrustSnapshot) => Promise<TrustSnapshot>): Promise<void> {
  let rig: Rig | undefined;
  return withBroker((b) => fn(b, rig!), {
    trustRoots: async (dir) => {
      const trust = await dataDirTrust(dir);
      const first = initial ? await initial(dir, trust.initial) : trust.initial;
      const roots = staticTrustRoots(first);
      rig = { roots, initial: first };
      return roots;
    },
  });
}

test('ok/api-tls rotation: the next by SNI in learn, the default at commit, the retired by SNI for the grace period', async (t) => {
  await withTlsBroker(async (b, rig) => {
    const current = rig.initial.tls!;
    const next = nextTlsIdentity();
    t.is(await presentedPin(b), current.pin);
    t.is(await presentedPin(b, pinServerName(next.pin)!), current.pin, 'before the rotation the next is unknown: the default');

    rig.roots.set({ ...rig.initial, rotation: { id: 1, root: 'api-tls', phase: 'learn' }, otherTls: [next], trust: { ...rig.initial.trust, apiPins: [current.pin, next.pin] } });
    t.is(await presentedPin(b), current.pin, 'learn: the default is still the current');
    t.is(await presentedPin(b, pinServerName(next.pin)!), next.pin);
    t.is(await presentedPin(b, pinServerName(current.pin)!), current.pin);
    t.is(await presentedPin(b, 'broker.example'), current.pin, 'any other name: the default');
    // curl, pinning the next key, reaches the API through its SNI name.
    const name = pinServerName(next.pin)!;
    const curl = await runCommand('curl', ['-sS', '-k', '--pinnedpubkey', next.pin, '--resolve', `${name}:${b.broker.apiPort}:127.0.0.1`, `https://${name}:${b.broker.apiPort}/healthz`]);
    t.is(curl.code, 0, curl.stderr);
    t.deepEqual(JSON.parse(curl.stdout) as HealthResponse, { status: 'ok' });

    const open = await handshake(b.broker.apiPort);
    try {
      rig.roots.set({ ...rig.initial, tls: next, otherTls: [], trust: { ...rig.initial.trust, apiPins: [next.pin] } });
      t.is(await presentedPin(b), next.pin, 'commit: the next is the default, no restart');
      // A connection made before the commit is untouched: same key, still answering.
      t.is(tlsPinOfSpki(open.getPeerCertificate().pubkey!), current.pin);
      t.regex(await healthOver(open), /^HTTP\/1\.1 200/);
    } finally {
      open.destroy();
    }
    // The retired identity, by its name, for agents that slept through the rotation.
    t.is(await presentedPin(b, pinServerName(current.pin)!), current.pin);
    // The agents' client (api/client.ts) finds it: the URL's name meets the next key, then the pin's name the retired one.
    const oldPinOnly = { baseUrl: b.broker.apiUrl, pin: current.pin };
    t.deepEqual(await apiRequest<HealthResponse>(oldPinOnly, 'GET', '/healthz'), { status: 'ok' });
    b.clock.advance((b.broker.core.config.certs.renewGraceSeconds + 60) * 1000);
    t.is(await presentedPin(b, pinServerName(current.pin)!), next.pin, 'after the grace period the retired one is gone');
    const refused = await t.throwsAsync(apiRequest(oldPinOnly, 'GET', '/healthz'));
    t.is((refused as ApiError).code, 'PIN_MISMATCH');
  });
});

test('ok/pinServerName: 32 hex digits of the pin, then .pin.certunnel.invalid; null for what is not a pin', (t) => {
  const pin = 'sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=';
  t.is(pinServerName(pin), 'e3b0c44298fc1c149afbf4c8996fb924.pin.certunnel.invalid');
  for (const bad of ['', 'sha256//', 'sha1//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=', `${pin}x`, 'sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=']) t.is(pinServerName(bad), null, bad);
});

test('ok/a self-signed certificate within 30 days of its end is renewed with the same key: the pin stays', async (t) => {
  await withTlsBroker(async (b, rig) => {
    const paths = dataPaths(b.dir);
    const served = new X509Certificate(await certOfHandshake(b));
    t.true(Date.parse(served.validTo) - Date.now() > 300 * 86400_000, `renewed: valid until ${served.validTo}`);
    t.is(await presentedPin(b), rig.initial.tls!.pin);
    t.is(new X509Certificate(await readFile(paths.tlsCert, 'utf8')).serialNumber, served.serialNumber, 'tls/api.crt holds the renewed certificate');
    t.true(b.logs.some((l) => l.includes('renewed with the same key')));
    t.true(metricValue(await fetchText(b, '/metrics'), 'certunnel_api_tls_cert_expiry_seconds') > 300 * 86400);
    t.deepEqual(await b.call<HealthResponse>(b.anonymous, 'GET', '/healthz'), { status: 'ok' });
  }, async (dir, base) => {
    const paths = dataPaths(dir);
    const key = await readFile(paths.tlsKey, 'utf8');
    const cert = issueSelfSignedCertificate(key, TEST_HOSTNAMES, new Date(), 10);
    await writeFile(paths.tlsCert, cert);
    const tls = tlsIdentityOf(key, cert);
    return { ...base, tls };
  });
});

test('fail/an operator certificate near its end is not replaced: API_TLS_CERT_EXPIRING, logged, the metric', async (t) => {
  let operatorCert = '';
  await withTlsBroker(async (b) => {
    const fingerprintOf = (pem: string): string => new X509Certificate(pem).fingerprint256;
    t.is(fingerprintOf(await certOfHandshake(b)), fingerprintOf(operatorCert), 'still the operator certificate');
    t.is(await readFile(dataPaths(b.dir).tlsCert, 'utf8'), operatorCert, 'tls/api.crt untouched');
    const health = await b.call<HealthResponse>(b.anonymous, 'GET', '/healthz');
    t.deepEqual(health, { status: 'degraded', problems: ['API_TLS_CERT_EXPIRING'] });
    t.true(b.logs.some((l) => l.includes('"code":"API_TLS_CERT_EXPIRING"')));
    const left = metricValue(await fetchText(b, '/metrics'), 'certunnel_api_tls_cert_expiry_seconds');
    t.true(left > 4 * 86400 && left <= 5 * 86400, String(left));
  }, async (dir, base) => {
    const paths = dataPaths(dir);
    const key = await readFile(paths.tlsKey, 'utf8');
    operatorCert = caSignedCertificate(key, 5);
    await writeFile(paths.tlsCert, operatorCert);
    return { ...base, tls: tlsIdentityOf(key, operatorCert) };
  });
});

async function certOfHandshake(b: TestBroker): Promise<string> {
  const socket = await handshake(b.broker.apiPort);
  try {
    const raw = socket.getPeerCertificate().raw;
    return new X509Certificate(raw).toString();
  } finally {
    socket.destroy();
  }
}

/** GET PATH's whole HTTP answer (status line, headers, body) over a fresh TLS connection. */
function fetchText(b: TestBroker, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port: b.broker.apiPort, rejectUnauthorized: false, checkServerIdentity: () => undefined });
    let text = '';
    socket.on('data', (c: Buffer) => (text += c.toString('utf8')));
    socket.once('end', () => resolve(text));
    socket.once('error', reject);
    socket.once('secureConnect', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`));
  });
}

function metricValue(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/** A certificate for KEYPEM's key signed by a throwaway CA (not self-signed), ending in DAYS days. */
function caSignedCertificate(keyPem: string, days: number): string {
  const ca = forge.pki.rsa.generateKeyPair(2048);
  const subjectKey = forge.pki.publicKeyFromPem(createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'pem' }).toString());
  const cert = forge.pki.createCertificate();
  cert.publicKey = subjectKey;
  cert.serialNumber = '02';
  cert.validity.notBefore = new Date(Date.now() - 86400_000);
  cert.validity.notAfter = new Date(Date.now() + days * 86400_000);
  cert.setSubject([{ name: 'commonName', value: 'broker.example' }]);
  cert.setIssuer([{ name: 'commonName', value: 'Example Company CA' }]);
  cert.setExtensions([{ name: 'subjectAltName', altNames: [{ type: 2, value: 'broker.example' }, { type: 7, ip: '127.0.0.1' }] }]);
  cert.sign(ca.privateKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}
