/**
 * Trust snapshots for tests of what the broker presents during rotations
 * (core/trust-roots.ts): the data directory's keys as a staticTrustRoots
 * to flip with set(), and next host keys, host CAs and TLS identities made
 * the way a rotation would make them.
 */
import { formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, signHostCert, type KeyPair, type PublicKey } from '../ca/index.js';
import { dataPaths } from '../broker/compose/data-dir.js';
import { loadCurrentKeys } from '../broker/compose/rotation-follower.js';
import { generateTlsIdentity, servedTlsIdentity } from '../broker/compose/tls.js';
import { trustSnapshot } from '../broker/core/rotation-snapshot.js';
import { staticTrustRoots, type TlsIdentity, type TrustRoots, type TrustSnapshot } from '../broker/core/trust-roots.js';

export type SettableTrustRoots = TrustRoots & { set(next: TrustSnapshot): void };

/** The names test brokers' host certificates carry (data-dir.ts brokerHostnames for 127.0.0.1 listeners). */
export const TEST_HOSTNAMES = ['certunnel.local', 'localhost', '127.0.0.1'];

/** A data directory's keys (made by initDataDir without a passphrase), the host CA's private key too, and a settable TrustRoots of them. */
export async function dataDirTrust(dir: string, options: { insecureHttp?: boolean } = {}): Promise<{ roots: SettableTrustRoots; initial: TrustSnapshot; hostCa: KeyPair }> {
  const paths = dataPaths(dir);
  const initial = trustSnapshot(await loadCurrentKeys(paths, { insecureHttp: options.insecureHttp ?? false }), null);
  return { roots: staticTrustRoots(initial), initial, hostCa: await loadKeyPair(paths.hostCa) };
}

/** A TLS identity from PEM key and certificate; the pin is computed from the certificate. */
export const tlsIdentityOf = servedTlsIdentity;

/** The snapshot of a broker at rest with these keys (no rotation, no TLS). */
export function restingSnapshot(keys: { userCa: KeyPair; hostCa: PublicKey; hostKey: KeyPair; hostCertificate: string }): TrustSnapshot {
  return trustSnapshot({ ...keys, tls: null }, null);
}

/** A host certificate line for HOSTKEY signed by HOSTCA, as init makes the broker's. */
export function hostCertificateLine(hostCa: KeyPair, hostKey: KeyPair, hostnames: readonly string[] = TEST_HOSTNAMES): string {
  const cert = signHostCert({ hostCa, publicKey: hostKey.publicKey, hostnames, serial: BigInt(1 + Math.floor(Math.random() * 1e9)), now: new Date() });
  return formatCertificate(cert, 'certunnel broker host certificate');
}

/** A new API TLS identity (a rotation's next), self-signed for the test hostnames. */
export function nextTlsIdentity(): TlsIdentity {
  const made = generateTlsIdentity(TEST_HOSTNAMES);
  return tlsIdentityOf(made.keyPem, made.certPem);
}

/**
 * A host-key rotation of BASE: the next key (certified by the same host CA)
 * in trust during learn; presented after commit.
 */
export function hostKeyRotation(base: TrustSnapshot, hostCa: KeyPair): { next: KeyPair; learn: TrustSnapshot; committed: TrustSnapshot } {
  const next = generateKeyPair();
  const line = formatPublicKey(next.publicKey);
  const learn: TrustSnapshot = {
    ...base, rotation: { id: 1, root: 'host-key', phase: 'learn' }, trust: { ...base.trust, hostKeys: [...base.trust.hostKeys, line] },
  };
  const committed: TrustSnapshot = {
    ...base, hostKey: next, hostCertificate: hostCertificateLine(hostCa, next), trust: { ...base.trust, hostKeys: [line] },
  };
  return { next, learn, committed };
}
