/**
 * What the enrollment / renewal / revocation rules need, as narrow
 * interfaces: a store, the trust roots, a clock, the config, and hooks for what
 * happens after a commit. No koa, no ssh2 here.
 */
import type { BrokerConfig } from './config.js';
import type { Store } from '../store/types.js';
import type { AuditSink } from './failure-audit.js';
import type { ApiKeyRole, SshAddressWire, SshEndpointWire } from '../../api/index.js';
import type { TrustRootName, TrustRoots } from './trust-roots.js';
import type { NextKeyMaterial } from './rotation-seal.js';

/** Who is acting and from where, for authorization and the audit trail. */
export interface Actor {
  /** `apikey:<id>`, `device:<id>`, `token:<id>`, `system`. */
  readonly id: string;
  readonly role?: ApiKeyRole;
  /** The API key's name, for operator certificates' key ids. */
  readonly name?: string;
  readonly remoteAddr: string | null;
}

export interface CoreHooks {
  /**
   * After a revocation commits (and again on every re-revocation): deny the
   * device in memory, close its live sessions, rewrite the KRL. Rejects only
   * if the store cannot be read; a failing KRL write is retried by the hook.
   */
  deviceRevoked(deviceId: string): Promise<void>;
  /**
   * After a key rotation commits: the old key's certificates (SERIALS) are
   * revoked in the store; deny them in memory, close the sessions that
   * authenticated with them, rewrite the KRL.
   */
  certificatesRevoked(deviceId: string, serials: readonly bigint[]): Promise<void>;
}

export interface CoreDeps {
  readonly store: Store;
  readonly config: BrokerConfig;
  readonly clock: () => Date;
  /**
   * This broker's SSH endpoint: its host, port and device login. Its host key and host CA are those of the start;
   * grants and GET /v1/ca take them from trustRoots (presentedSshEndpoint in ssh-endpoints.ts).
   */
  readonly ssh: SshEndpointWire;
  /** What the broker presents, signs with and accepts now (trust-roots.ts); grants carry its `trust`. */
  readonly trustRoots: TrustRoots;
  /**
   * Every SSH endpoint devices may dial, asked at each grant (ssh-endpoints.ts): today the config's ssh.endpoints
   * (or `ssh` alone); a node registry may answer it from the live nodes instead.
   */
  sshEndpoints(): readonly SshAddressWire[];
  readonly hooks: CoreHooks;
  /** Rotations of the trust roots (core/rotation.ts); absent when the trust roots are given (tests): rotation routes refuse ROTATION_UNSUPPORTED. */
  readonly rotation?: RotationSupport;
  /** Failure audit rows go here (a FailureAggregator in front of the store); absent: straight to the store. */
  readonly failureAudit?: AuditSink;
}

/** A root's next key, made by the node that starts the rotation. */
export interface NextKey {
  readonly material: NextKeyMaterial;
  /** Fingerprints (SHA256:… for SSH keys, the sha256// pin for TLS) of the root now and next. */
  readonly fromFingerprint: string;
  readonly nextFingerprint: string;
}

/** What only the composition has: the keys on disk, and this node's follower. */
export interface RotationSupport {
  /** Makes ROOT's next key; throws ROTATION_UNSUPPORTED when this broker cannot rotate it. */
  makeNextKey(root: TrustRootName): Promise<NextKey>;
  /** Re-reads the store now (after a change this node made: SQLite has no notifications). */
  refresh(): Promise<void>;
}
