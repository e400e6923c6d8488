/**
 * Wire types of the routes the operators' console uses besides the older
 * ones (api/operator.ts): device labels and certificate history, token
 * batches, the broker's status, the console's session and its live events.
 * The console is a client of the API like the CLI, so these are API routes
 * with the same roles, callable with a bearer key too.
 */
import type { ApiKeyRole } from './operator.js';
import type { TrustSetWire } from './device.js';
import type { RotationView } from './rotation.js';

// ---- device labels: PUT /v1/devices/:ref/labels (admin, operator) --------------

/** A label key: letters, digits, dot, underscore, slash, hyphen. */
export const LABEL_KEY = /^[A-Za-z0-9._/-]{1,63}$/;
/** At most this many labels on a device. */
export const MAX_LABELS = 32;

export interface SetDeviceLabelsRequest {
  /** The device's labels, replacing the old ones; values 0..200 printable characters. */
  labels: Record<string, string>;
}

// ---- certificate history: GET /v1/devices/:ref/certificates (admin, operator) ----

export interface CertificateView {
  serial: string;
  keyId: string;
  principal: string;
  fingerprint: string;
  validAfter: string;
  validBefore: string;
  issuedAt: string;
  revokedAt: string | null;
}

export interface ListCertificatesResponse {
  /** Newest first, the last 50. */
  items: CertificateView[];
}

// ---- token batches: GET /v1/tokens/batches (admin, provisioner) -----------------

export interface TokenBatchView {
  /** null: tokens minted without a batch. */
  batch: string | null;
  total: number;
  /** Redeemed by a device. */
  used: number;
  /** Unused and still redeemable. */
  active: number;
  expired: number;
  revoked: number;
  firstCreatedAt: string;
  lastCreatedAt: string;
  lastExpiresAt: string;
}

export interface ListTokenBatchesResponse {
  /** Newest batch first, the last 200. */
  items: TokenBatchView[];
}

// ---- the broker: GET /v1/broker (admin, operator) --------------------------------

export interface TunnelSample {
  at: string;
  online: number;
}

export interface BrokerStatusResponse {
  health: { status: 'ok' | 'degraded'; problems: string[] };
  /** SHA256:… fingerprints, as `ssh-keygen -l` prints them. */
  fingerprints: { userCa: string; hostCa: string; hostKey: string };
  /** The API's TLS pin (sha256/…), null on plain HTTP. */
  apiPin: string | null;
  /** The version of the KRL the broker serves. */
  krlVersion: string;
  devices: { active: number; revoked: number; online: number };
  /** Tunnels online, sampled every minute, oldest first (the last 24 hours at most). */
  tunnelsOnline: TunnelSample[];
  startedAt: string;
  /** What devices are told to trust now (TrustSetWire, as in grants); absent from brokers before 0.5. */
  trust?: TrustSetWire;
  /**
   * Admin sessions only: the rotation under way as this node follows it (GET /v1/rotations/current tells how far it
   * is), null when none; absent for other roles and from brokers before 0.5.
   */
  rotation?: Pick<RotationView, 'id' | 'root' | 'phase'> | null;
}

// ---- the console's session: GET /v1/console/session -----------------------------

export type ConsoleSignInMethod = 'apikey' | 'oidc';

export interface ConsoleSessionResponse {
  method: ConsoleSignInMethod;
  /** The API key's id, or the OIDC subject. */
  subject: string;
  /** The API key's name, or the person's name. */
  name: string;
  email: string | null;
  role: Exclude<ApiKeyRole, 'proxy'>;
  expiresAt: string;
  /** Send as X-CSRF-Token on every POST, PUT, DELETE made with this session. */
  csrfToken: string;
  /** Whether the broker's HTTP proxy is on (devices' web pages can be opened). */
  deviceWebPages: boolean;
}

/** GET /v1/events (text/event-stream): `event: devices` with this data whenever devices change. */
export interface DevicesChangedEvent {
  ids: string[];
}

/** The header that carries the console's CSRF token. */
export const CSRF_HEADER = 'x-csrf-token';
