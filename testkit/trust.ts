/**
 * Trust snapshots for tests of what the broker presents during rotations
 * (core/trust-roots.ts): the data directory's keys as a staticTrustRoots
 * to flip with set(), and next host keys, host CAs and TLS identities made
 * the way a rotation would make them.
 */
import { readFile } from 'node:fs/promises';
import { formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, loadPublicKey, signHostCert, type KeyPair } from '../ca/index.js';
import { dataPaths } from '../broker/compose/data-dir.js';
import { generateTlsIdentity } from '../broker/compose/tls.js';
import { loadTlsIdentity, snapshotFromKeys, tlsIdentityOf } from '../broker/compose/trust-from-keys.js';
import { staticTrustRoots, type TlsIdentity, type TrustRoots, type TrustSnapshot } from '../broker/core/trust-roots.js';

export type SettableTrustRoots = TrustRoots & { set(next: TrustSnapshot): void };

/** The names test brokers' host certificates carry (data-dir.ts brokerHostnames for 127.0.0.1 listeners). */
export const TEST_HOSTNAMES = ['certunnel.local', 'localhost', '127.0.0.1'];

/** A data directory's keys (made by initDataDir without a passphrase), the host CA's private key too, and a settable TrustRoots of them. */
export async function dataDirTrust(dir: string, options: { insecureHttp?: boolean } = {}): Promise<{ roots: SettableTrustRoots; initial: TrustSnapshot; hostCa: KeyPair }> {
  const paths = dataPaths(dir);
  const keys = {
    userCa: await loadKeyPair(paths.userCa),
    hostCaPublicKey: await loadPublicKey(`${paths.hostCa}.pub`),
    hostKey: await loadKeyPair(paths.hostKey),
    hostCertificate: (await readFile(paths.hostCert, 'utf8')).trim(),
  };
  const initial = snapshotFromKeys(keys, await loadTlsIdentity(paths, options.insecureHttp ?? false));
  return { roots: staticTrustRoots(initial), initial, hostCa: await loadKeyPair(paths.hostCa) };
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
