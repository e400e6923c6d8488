/**
 * The TrustSnapshot of a moment (trust-roots.ts), from the keys this node
 * holds now and the rotation under way with its next key loaded: what each
 * phase of each root's rotation presents, signs with and accepts
 * (docs/rotation.md, "What each phase does"). Pure: the follower
 * (compose/rotation-follower.ts) calls it at every change.
 */
import { formatPublicKey, type KeyPair, type PublicKey } from '../../ca/index.js';
import type { RotationPhase, TlsIdentity, TrustRootName, TrustSnapshot } from './trust-roots.js';

/** The keys in the data directory: the current ones. */
export interface CurrentKeys {
  readonly userCa: KeyPair;
  readonly hostCa: PublicKey;
  readonly hostKey: KeyPair;
  readonly hostCertificate: string;
  /** Null when the broker does not serve its own TLS (api.insecureHttp, behind a proxy). */
  readonly tls: TlsIdentity | null;
  /** api.backupPins: TLS keys in reserve, in every trust set after the served key's (and a rotation's next). */
  readonly backupPins?: readonly string[];
}

/** A rotation's next key, opened. */
export type LoadedNext =
  | { readonly root: 'user-ca'; readonly userCa: KeyPair }
  | { readonly root: 'host-key'; readonly hostKey: KeyPair; readonly hostCertificate: string }
  | { readonly root: 'host-ca'; readonly hostCa: KeyPair; readonly hostCertificate: string }
  | { readonly root: 'api-tls'; readonly tls: TlsIdentity };

export interface LoadedRotation {
  readonly id: number;
  readonly root: TrustRootName;
  readonly phase: RotationPhase;
  readonly next: LoadedNext;
}

export function trustSnapshot(current: CurrentKeys, rotation: LoadedRotation | null): TrustSnapshot {
  const hostKeys = [formatPublicKey(current.hostKey.publicKey)];
  const hostCas = [formatPublicKey(current.hostCa)];
  const apiPins = current.tls ? [current.tls.pin] : [];
  let signingUserCa = current.userCa;
  const acceptedUserCas = [current.userCa.publicKey];
  const otherTls: TlsIdentity[] = [];
  const next = rotation?.next;
  const learn = rotation?.phase === 'learn';
  if (next?.root === 'user-ca') {
    // Accepted from prepare on, so that no node refuses what another signs once learn begins.
    acceptedUserCas.push(next.userCa.publicKey);
    if (learn) signingUserCa = next.userCa;
  } else if (next?.root === 'host-key' && learn) {
    hostKeys.push(formatPublicKey(next.hostKey.publicKey));
  } else if (next?.root === 'host-ca' && learn) {
    hostCas.push(formatPublicKey(next.hostCa.publicKey));
  } else if (next?.root === 'api-tls' && learn) {
    otherTls.push(next.tls);
    apiPins.push(next.tls.pin);
  }
  return {
    rotation: rotation ? { id: rotation.id, root: rotation.root, phase: rotation.phase } : null,
    signingUserCa,
    acceptedUserCas,
    hostKey: current.hostKey,
    hostCertificate: current.hostCertificate,
    hostCa: current.hostCa,
    tls: current.tls,
    otherTls,
    // Backup pins only beside a TLS identity of the broker's own (behind a proxy devices pin nothing of it).
    trust: { hostKeys, hostCertificateAuthorities: hostCas, apiPins: current.tls ? [...new Set([...apiPins, ...(current.backupPins ?? [])])] : [] },
  };
}
