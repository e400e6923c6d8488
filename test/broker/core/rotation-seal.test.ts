/** broker/core/rotation-seal.ts: the next key sealed under the current user CA opens there only, for its root only. */
import test from 'ava';
import { encodePrivateKey, generateKeyPair } from '../../../ca/index.js';
import { openNextKey, sealNextKey, type NextKeyMaterial } from '../../../broker/core/rotation-seal.js';
import { BrokerError } from '../../../broker/core/errors.js';

const userCa = generateKeyPair();
const next: NextKeyMaterial = { root: 'user-ca', key: encodePrivateKey(generateKeyPair()) };

test('ok/sealed then opened under the same user CA: the same material; every seal differs (salt, iv)', (t) => {
  const a = sealNextKey(next, userCa);
  const b = sealNextKey(next, userCa);
  t.not(a, b);
  t.deepEqual(openNextKey(a, 'user-ca', userCa), next);
  t.deepEqual(openNextKey(b, 'user-ca', userCa), next);
  const tls: NextKeyMaterial = { root: 'api-tls', key: '-----BEGIN PRIVATE KEY-----\nx\n', cert: '-----BEGIN CERTIFICATE-----\ny\n' };
  t.deepEqual(openNextKey(sealNextKey(tls, userCa), 'api-tls', userCa), tls);
  const host: NextKeyMaterial = { root: 'host-key', key: next.key, hostCertificate: 'ssh-ed25519-cert-v01@openssh.com AAAA' };
  t.deepEqual(openNextKey(sealNextKey(host, userCa), 'host-key', userCa), host);
});

test('ok/the seal holds no key material in clear', (t) => {
  const sealed = sealNextKey(next, userCa);
  t.false(sealed.includes('OPENSSH'));
  t.false(Buffer.from(sealed.split('.')[3]!, 'base64url').toString('latin1').includes('OPENSSH'));
});

const refused = (t: import('ava').ExecutionContext, fn: () => unknown) => {
  const err = t.throws(fn, { instanceOf: BrokerError });
  t.is(err?.code, 'INTERNAL');
  t.false(err?.message.includes('OPENSSH') ?? true);
};

test('fail/another user CA, another root, any altered byte, a malformed blob: refused', (t) => {
  const sealed = sealNextKey(next, userCa);
  refused(t, () => openNextKey(sealed, 'user-ca', generateKeyPair()));
  refused(t, () => openNextKey(sealed, 'host-ca', userCa));
  const parts = sealed.split('.');
  for (const i of [1, 2, 3, 4]) {
    const bytes = Buffer.from(parts[i]!, 'base64url');
    bytes[0] = bytes[0]! ^ 1;
    const altered = [...parts];
    altered[i] = bytes.toString('base64url');
    refused(t, () => openNextKey(altered.join('.'), 'user-ca', userCa));
  }
  for (const bad of ['', 'v1', 'v2.' + parts.slice(1).join('.'), `${sealed}.x`]) refused(t, () => openNextKey(bad, 'user-ca', userCa));
});

test('fail/a seal of material without its fields (host-key without a certificate): refused', (t) => {
  const partial = sealNextKey({ root: 'host-key', key: next.key } as unknown as NextKeyMaterial, userCa);
  refused(t, () => openNextKey(partial, 'host-key', userCa));
});
