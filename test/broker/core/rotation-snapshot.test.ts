/** broker/core/rotation-snapshot.ts: what each root's rotation presents, signs with and accepts, phase by phase. */
import test from 'ava';
import { formatPublicKey, generateKeyPair } from '../../../ca/index.js';
import { trustSnapshot, type CurrentKeys, type LoadedNext } from '../../../broker/core/rotation-snapshot.js';
import type { RotationPhase } from '../../../broker/core/trust-roots.js';

const current: CurrentKeys = {
  userCa: generateKeyPair(), hostCa: generateKeyPair().publicKey, hostKey: generateKeyPair(), hostCertificate: 'ssh-ed25519-cert-v01@openssh.com AAAA',
  tls: { key: 'k', cert: 'c', pin: 'sha256//current' },
};
const fmt = formatPublicKey;
const next = { userCa: generateKeyPair(), hostKey: generateKeyPair(), hostCa: generateKeyPair() };
const loaded: Record<string, LoadedNext> = {
  'user-ca': { root: 'user-ca', userCa: next.userCa },
  'host-key': { root: 'host-key', hostKey: next.hostKey, hostCertificate: 'next-cert' },
  'host-ca': { root: 'host-ca', hostCa: next.hostCa, hostCertificate: 'next-cert' },
  'api-tls': { root: 'api-tls', tls: { key: 'k2', cert: 'c2', pin: 'sha256//next' } },
};
const at = (root: string, phase: RotationPhase) => trustSnapshot(current, { id: 7, root: loaded[root]!.root, phase, next: loaded[root]! });

test('ok/outside a rotation: one of each, the current ones', (t) => {
  const s = trustSnapshot(current, null);
  t.is(s.rotation, null);
  t.is(s.signingUserCa, current.userCa);
  t.deepEqual(s.acceptedUserCas, [current.userCa.publicKey]);
  t.deepEqual(s.trust, { hostKeys: [fmt(current.hostKey.publicKey)], hostCertificateAuthorities: [fmt(current.hostCa)], apiPins: ['sha256//current'] });
  t.deepEqual(s.otherTls, []);
  t.deepEqual(trustSnapshot({ ...current, tls: null }, null).trust.apiPins, [], 'no TLS of its own: no pin');
});

test('ok/user-ca: prepare accepts both and signs with the current; learn signs with the next', (t) => {
  const prepare = at('user-ca', 'prepare');
  t.deepEqual(prepare.rotation, { id: 7, root: 'user-ca', phase: 'prepare' });
  t.deepEqual(prepare.acceptedUserCas, [current.userCa.publicKey, next.userCa.publicKey]);
  t.is(prepare.signingUserCa, current.userCa);
  const learn = at('user-ca', 'learn');
  t.deepEqual(learn.acceptedUserCas, [current.userCa.publicKey, next.userCa.publicKey]);
  t.is(learn.signingUserCa, next.userCa);
  t.deepEqual(learn.trust, trustSnapshot(current, null).trust, 'nothing to learn for the devices but their certificates');
});

test('ok/host-key, host-ca, api-tls: nothing in prepare; learn lists both (current first), presents the current', (t) => {
  const none = trustSnapshot(current, null);
  for (const root of ['host-key', 'host-ca', 'api-tls']) {
    const prepare = at(root, 'prepare');
    t.deepEqual({ ...prepare, rotation: null }, none, `${root} prepare`);
  }
  const hk = at('host-key', 'learn');
  t.deepEqual(hk.trust.hostKeys, [fmt(current.hostKey.publicKey), fmt(next.hostKey.publicKey)]);
  t.is(hk.hostKey, current.hostKey);
  t.is(hk.hostCertificate, current.hostCertificate);
  const hc = at('host-ca', 'learn');
  t.deepEqual(hc.trust.hostCertificateAuthorities, [fmt(current.hostCa), fmt(next.hostCa.publicKey)]);
  t.is(hc.hostCa, current.hostCa);
  const tls = at('api-tls', 'learn');
  t.deepEqual(tls.trust.apiPins, ['sha256//current', 'sha256//next']);
  t.is(tls.tls, current.tls);
  t.deepEqual(tls.otherTls.map((x) => x.pin), ['sha256//next']);
  for (const s of [hk, hc, tls]) t.deepEqual(s.acceptedUserCas, [current.userCa.publicKey]);
});
