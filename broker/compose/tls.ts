/**
 * The API's TLS identity: a self-signed certificate made at init with
 * node-forge (RSA: forge makes no EC or Ed25519 certificates). Devices pin
 * the SHA-256 of its SubjectPublicKeyInfo ("sha256//BASE64", the form curl's
 * --pinnedpubkey takes), so a re-issued certificate for the same key keeps
 * working and no CA store is involved.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import forge from 'node-forge';
import { tlsPinOfSpki } from '../../ca/index.js';
import type { TlsIdentity as ServedTls } from '../core/trust-roots.js';

export interface TlsIdentity {
  readonly keyPem: string;
  readonly certPem: string;
  /** "sha256//BASE64" of the certificate's SubjectPublicKeyInfo. */
  readonly pin: string;
  /** SHA-256 fingerprint of the whole certificate, colon-separated hex (as openssl x509 -fingerprint prints). */
  readonly certFingerprint: string;
}

export function spkiPin(certPem: string): string {
  return tlsPinOfSpki(createPublicKey(certPem).export({ type: 'spki', format: 'der' }));
}

/** An identity the API serves (core/trust-roots.ts) from PEM key and certificate: the pin is computed, never read (a stale api.pin cannot lie). */
export function servedTlsIdentity(key: string, cert: string): ServedTls {
  return { key, cert, pin: spkiPin(cert) };
}

export function generateTlsIdentity(hostnames: readonly string[], now = new Date()): TlsIdentity {
  // Node generates the RSA key natively; forge only assembles the certificate.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const certPem = issueSelfSignedCertificate(keyPem, hostnames, now);
  return { keyPem, certPem, pin: spkiPin(certPem), certFingerprint: new X509Certificate(certPem).fingerprint256 };
}

/**
 * A self-signed certificate for the RSA key KEYPEM (PKCS#8 or PKCS#1 PEM)
 * naming HOSTNAMES, valid from an hour before NOW for VALIDITYDAYS: what
 * init makes, and what the renewal (api-tls-renewal.ts) makes again with
 * the same key, so the pin devices hold does not change.
 */
export function issueSelfSignedCertificate(keyPem: string, hostnames: readonly string[], now = new Date(), validityDays = 10 * 365): string {
  const privateKey = createPrivateKey(keyPem);
  const forgePrivate = forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }).toString());
  const forgePublic = forge.pki.publicKeyFromPem(createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString());
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublic;
  cert.serialNumber = `01${forge.util.bytesToHex(forge.random.getBytesSync(15))}`;
  cert.validity.notBefore = new Date(now.getTime() - 3600_000);
  cert.validity.notAfter = new Date(now.getTime() + validityDays * 86400_000);
  const subject = [{ name: 'commonName', value: hostnames[0] ?? 'certunnel' }, { name: 'organizationName', value: 'certunnel broker' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: hostnames.map((h) => (/^[0-9.]+$/.test(h) || h.includes(':') ? { type: 7, ip: h } : { type: 2, value: h })),
    },
  ]);
  cert.sign(forgePrivate, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/** Whether CERTPEM is self-signed (issuer = subject, signed by its own key): the broker's own, which it may renew. */
export function isSelfSigned(certPem: string): boolean {
  const cert = new X509Certificate(certPem);
  return cert.issuer === cert.subject && cert.verify(cert.publicKey);
}
