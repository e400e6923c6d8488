/**
 * Wire types of the rotation routes (broker/http/routes-rotation.ts,
 * docs/rotation.md): one trust root rotated at a time, cluster-wide,
 * through prepare and learn to commit (or rollback). Admin keys only.
 */

export const TRUST_ROOT_NAMES = ['user-ca', 'host-ca', 'host-key', 'api-tls'] as const;
export type TrustRootWire = (typeof TRUST_ROOT_NAMES)[number];

/** POST /v1/rotations */
export interface StartRotationRequest {
  root: TrustRootWire;
}

/** POST /v1/rotations/current/commit; force: commit with lagging devices (they lose the old trust), or from prepare. */
export interface CommitRotationRequest {
  force?: boolean;
}

export interface RotationView {
  id: number;
  root: TrustRootWire;
  /** While active, the phase; once finished, the last phase it reached. */
  phase: 'prepare' | 'learn';
  /** SHA256:… (SSH keys) or sha256//… (TLS) of the root before and after. */
  from: string;
  next: string;
  startedAt: string;
  startedBy: string;
  learnAt: string | null;
  finishedAt: string | null;
  finishedBy: string | null;
  outcome: 'committed' | 'rolled_back' | 'forced' | null;
}

export interface LaggingDeviceView {
  id: string;
  name: string | null;
  lastSeenAt: string | null;
}

/** GET /v1/rotations/current */
export interface RotationStatusResponse {
  rotation: RotationView;
  nodes: {
    /** Up nodes that loaded the next key, of all up nodes; the ids of those that have not. */
    acked: number;
    up: number;
    lagging: string[];
  };
  devices: {
    /** Active devices: not revoked, seen or issued a certificate within certs.renewGraceSeconds. */
    active: number;
    learned: number;
    /** At most 50, least recently seen first; laggingNotListed counts the rest. */
    lagging: LaggingDeviceView[];
    laggingNotListed: number;
  };
}

/** POST /v1/rotations, …/commit, …/rollback */
export interface RotationResponse {
  rotation: RotationView;
}
