/**
 * The trust roots of a broker without a rotation under way, from the keys
 * in its data directory (start.ts's loadKeys and tls/api.key, tls/api.crt):
 * one of each, presented, signing and trusted. A broker whose store drives
 * rotations replaces it with the rotation follower (start's
 * options.trustRoots); tests flip it with set().
 */
import { readFile } from 'node:fs/promises';
import { formatPublicKey, type KeyPair, type PublicKey } from '../../ca/index.js';
import { staticTrustRoots, type TlsIdentity, type TrustRoots, type TrustSnapshot } from '../core/trust-roots.js';
import type { DataPaths } from './data-dir.js';
import { spkiPin } from './tls.js';

export interface DataDirKeys {
  readonly userCa: KeyPair;
  readonly hostCaPublicKey: PublicKey;
  readonly hostKey: KeyPair;
  readonly hostCertificate: string;
}

/** A TLS identity from PEM key and certificate; the pin is computed, never read (a stale api.pin cannot lie). */
export function tlsIdentityOf(key: string, cert: string): TlsIdentity {
  return { key, cert, pin: spkiPin(cert) };
}

/** The API's TLS identity from the data directory; null when the API is plain HTTP. */
export async function loadTlsIdentity(paths: Pick<DataPaths, 'tlsKey' | 'tlsCert'>, insecureHttp: boolean): Promise<TlsIdentity | null> {
  if (insecureHttp) return null;
  return tlsIdentityOf(await readFile(paths.tlsKey, 'utf8'), await readFile(paths.tlsCert, 'utf8'));
}

/** The snapshot of a broker at rest: each list holds its one current entry. */
export function snapshotFromKeys(keys: DataDirKeys, tls: TlsIdentity | null): TrustSnapshot {
  return {
    rotation: null,
    signingUserCa: keys.userCa,
    acceptedUserCas: [keys.userCa.publicKey],
    hostKey: keys.hostKey,
    hostCertificate: keys.hostCertificate,
    hostCa: keys.hostCaPublicKey,
    tls,
    otherTls: [],
    trust: {
      hostKeys: [formatPublicKey(keys.hostKey.publicKey)],
      hostCertificateAuthorities: [formatPublicKey(keys.hostCaPublicKey)],
      apiPins: tls ? [tls.pin] : [],
    },
  };
}

export function trustRootsFromKeys(keys: DataDirKeys, tls: TlsIdentity | null): TrustRoots {
  return staticTrustRoots(snapshotFromKeys(keys, tls));
}
