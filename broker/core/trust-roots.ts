/**
 * The broker's trust roots as they stand right now, and the rotation of
 * them (issue #14, docs/rotation.md): the user CA (signs device, operator
 * and node certificates), the host CA (signs the broker's host
 * certificate), the broker's SSH host key, and the API's TLS key.
 *
 * A rotation of one root at a time, cluster-wide, kept in the store:
 *
 *   idle --start--> prepare --every up node loaded the next key--> learn --commit--> idle
 *                      \_______________rollback_______________________/
 *
 * - prepare: the next key exists (sealed in the store, see
 *   compose/rotation-follower.ts); each node loads it and accepts what it
 *   must accept (user CA: certificates of both CAs). Nothing is presented
 *   or signed with it yet.
 * - learn: devices learn the next trust: grants carry it in `trust`
 *   (TrustSetWire, current first), new device certificates are signed by
 *   the next user CA. What is presented (host key, TLS key) is still the
 *   current one.
 * - commit: the next becomes the current everywhere (presented, signing,
 *   on disk in every node's data directory); the old is retired (no longer
 *   accepted, no longer in trust sets).
 * - rollback (from prepare or learn): the next is dropped; everything is
 *   as before start.
 *
 * This file is the seam: TrustRoots is what the rest of the broker reads
 * (the gateway, the KRL, grants, OpenSSH files, the API's TLS), a snapshot
 * that changes only at phase changes, with listeners. The follower in
 * compose/ keeps it from the store; tests may build one with
 * staticTrustRoots() and flip it with set().
 */
import type { KeyPair, PublicKey } from '../../ca/index.js';
import type { TrustSetWire } from '../../api/index.js';

export const TRUST_ROOTS = ['user-ca', 'host-ca', 'host-key', 'api-tls'] as const;
export type TrustRootName = (typeof TRUST_ROOTS)[number];

export type RotationPhase = 'prepare' | 'learn';

/** A TLS identity of the API: PEM key and certificate, and its pin ("sha256//…"). */
export interface TlsIdentity {
  readonly key: string;
  readonly cert: string;
  readonly pin: string;
}

/**
 * Everything the broker presents, signs with and accepts at one moment.
 * `accepted*` and trust lists hold the current first; outside a rotation of
 * that root each holds exactly one.
 */
export interface TrustSnapshot {
  /** The rotation under way, if any. */
  readonly rotation: { readonly id: number; readonly root: TrustRootName; readonly phase: RotationPhase } | null;
  /** Signs new device, operator and node certificates (the next user CA in a user-ca rotation's learn phase). */
  readonly signingUserCa: KeyPair;
  /** Certificates signed by any of these log in (and the KRL lists revoked serials under each). */
  readonly acceptedUserCas: readonly PublicKey[];
  /** The host key the SSH server presents, and its host certificate line (signed by presentedHostCa). */
  readonly hostKey: KeyPair;
  readonly hostCertificate: string;
  /** The host CA that signed hostCertificate. */
  readonly hostCa: PublicKey;
  /** The API's TLS identity served by default, and any other served on request (a rotation's next). */
  readonly tls: TlsIdentity | null;
  readonly otherTls: readonly TlsIdentity[];
  /** What devices are told to trust (grants, GET /v1/ca). */
  readonly trust: TrustSetWire;
}

export interface TrustRoots {
  current(): TrustSnapshot;
  /** LISTENER runs after every change (never for the snapshot current() already gives); returns an unsubscribe. */
  onChange(listener: (snapshot: TrustSnapshot, previous: TrustSnapshot) => void): () => void;
}

/** Whether the user CAs accepted differ between two snapshots (a user-ca rotation's prepare, commit or rollback): what the KRL and TrustedUserCAKeys follow. */
export function userCasChanged(next: TrustSnapshot, previous: TrustSnapshot): boolean {
  const [a, b] = [next.acceptedUserCas, previous.acceptedUserCas];
  return a.length !== b.length || a.some((k, i) => !k.equals(b[i]!));
}

/** A TrustRoots that changes only when told (tests, and a broker whose store has no rotation). */
export function staticTrustRoots(initial: TrustSnapshot): TrustRoots & { set(next: TrustSnapshot): void } {
  let snapshot = initial;
  const listeners = new Set<(s: TrustSnapshot, p: TrustSnapshot) => void>();
  return {
    current: () => snapshot,
    onChange: (listener) => {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    set: (next) => {
      const previous = snapshot;
      snapshot = next;
      for (const listener of listeners) listener(next, previous);
    },
  };
}
