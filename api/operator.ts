/**
 * Wire types of the routes for API-key holders (broker/http/routes-operator.ts):
 * enrollment tokens (admin, provisioner), devices and the audit trail
 * (admin, operator), API keys (admin). Times are ISO 8601 strings; absent
 * values are null. Query parameters of the list routes are the fields of
 * their List…Request.
 */
import type { PortBlockWire } from './device.js';

/**
 * The roles an API key can carry. `proxy` only opens device web pages
 * through the HTTP proxy (bearer or login); the API refuses it on every
 * route (API_KEY_PROXY_ONLY).
 */
export const API_KEY_ROLES = ['admin', 'operator', 'provisioner', 'proxy'] as const;
export type ApiKeyRole = (typeof API_KEY_ROLES)[number];

/** An API key's name: who or what holds it. */
export const API_KEY_NAME = /^[A-Za-z0-9._@-]{1,100}$/;
/** A token batch name: revocable as a whole, owned by the output directory of `provision batch`. */
export const TOKEN_BATCH = /^[A-Za-z0-9._-]{1,64}$/;

// ---- lists ------------------------------------------------------------------

/** Keyset pagination, common to every list route. */
export interface ListRequest {
  /** 1..1000, default 100. */
  limit?: number;
  /** A previous page's nextCursor. */
  cursor?: string;
}

export interface ListResponse<T> {
  items: T[];
  /** Pass back as ?cursor= for the next page; null on the last one. */
  nextCursor: string | null;
}

// ---- enrollment tokens: POST /v1/tokens, GET /v1/tokens, POST /v1/tokens/revoke

/** Derived, not stored, in this order of precedence: used > revoked > expired > active. */
export const TOKEN_STATUSES = ['active', 'used', 'expired', 'revoked'] as const;
export type TokenStatus = (typeof TOKEN_STATUSES)[number];

export interface MintTokensRequest {
  /** Default 1; at most the broker's tokens.maxBatch. */
  count?: number;
  batch?: string;
  ttlSeconds?: number;
  /** One device name per token (length must equal count). */
  bindNames?: string[];
  /** One hardware serial per token (length must equal count). */
  bindSerials?: string[];
}

export interface MintedTokenView {
  id: string;
  /** The secret, shown only in this response. */
  token: string;
  batch: string | null;
  bindName: string | null;
  bindSerial: string | null;
  expiresAt: string;
}

export interface MintTokensResponse {
  batch: string | null;
  tokens: MintedTokenView[];
}

export interface ListTokensRequest extends ListRequest {
  batch?: string;
  status?: TokenStatus;
}

/** A token as listed: never its secret. */
export interface TokenView {
  id: string;
  batch: string | null;
  bindName: string | null;
  bindSerial: string | null;
  status: TokenStatus;
  createdAt: string;
  createdBy: string;
  expiresAt: string;
  usedAt: string | null;
  usedByDevice: string | null;
  revokedAt: string | null;
}

export type ListTokensResponse = ListResponse<TokenView>;

/** One token, or every unused token of a batch. */
export type RevokeTokensRequest = { id: string } | { batch: string };

export interface RevokeTokensResponse {
  /** Unused, unrevoked tokens revoked now. */
  revoked: number;
}

// ---- devices: GET /v1/devices, GET /v1/devices/:ref, POST /v1/devices/:ref/revoke (:ref is an id or a name)

export const DEVICE_STATUSES = ['active', 'revoked'] as const;
export type DeviceStatus = (typeof DEVICE_STATUSES)[number];

export interface ListDevicesRequest extends ListRequest {
  status?: DeviceStatus;
  /** Substring of the name, taken literally. */
  name?: string;
  /** KEY=VALUE: devices whose labels hold exactly that pair. */
  label?: string;
  /** `true`: devices with a tunnel up; `false`: without (added for the console). */
  online?: 'true' | 'false';
  /** The order of the pages: created (default), name, lastSeen (most recent first). */
  sort?: DeviceSort;
}

export const DEVICE_SORTS = ['created', 'name', 'lastSeen'] as const;
export type DeviceSort = (typeof DEVICE_SORTS)[number];

/** A device's current (latest) certificate, as the fleet lists it. */
export interface DeviceCertificateSummary {
  /** uint64, decimal. */
  serial: string;
  validBefore: string;
  revoked: boolean;
}

export interface DeviceView {
  id: string;
  name: string | null;
  hardwareSerial: string | null;
  status: DeviceStatus;
  /** Null when the device has no block recorded. */
  ports: PortBlockWire | null;
  publicKey: string;
  fingerprint: string;
  labels: Record<string, string>;
  online: boolean;
  connectedSince: string | null;
  remoteAddr: string | null;
  lastSeenAt: string | null;
  createdAt: string;
  revokedAt: string | null;
  revokedBy: string | null;
  revokeReason: string | null;
  /** The API key's name when revokedBy is `apikey:<id>` (absent otherwise; added after v0.2.0, so last). */
  revokedByName?: string;
  /** The latest certificate issued to the device, if any (added with the console, so last). */
  certificate?: DeviceCertificateSummary;
  /** Several broker nodes: the id of the node holding the device's tunnel (absent when offline or on a single broker that never said; added last). */
  node?: string;
}

export type ListDevicesResponse = ListResponse<DeviceView>;

export interface RevokeDeviceRequest {
  reason?: string;
}

export interface RevokeDeviceResponse {
  device: DeviceView;
  /** True if the device was revoked before: nothing changed. */
  alreadyRevoked: boolean;
  certificatesRevoked: number;
}

// ---- audit: GET /v1/audit -----------------------------------------------------

export interface ListAuditRequest extends ListRequest {
  /** Events at or after this ISO time. */
  since?: string;
  action?: string;
  actor?: string;
  /** Events about this target (a device id, a key id, …). */
  target?: string;
  /** Events before this ISO time. */
  until?: string;
}

export interface AuditEventView {
  id: number;
  at: string;
  /** `apikey:<id>`, `device:<id>`, `token:<id>`, `system`, … */
  actor: string;
  /** `token.mint`, `device.enroll`, `device.renew`, `device.revoke`, `auth.failure`, `ssh.forward`, … */
  action: string;
  target: string | null;
  remoteAddr: string | null;
  /** `ok`, an error code, or what the SSH layer decided (`refused`, `allowed`, `closed`). */
  outcome: string;
  /** Never secrets. */
  details: Record<string, unknown>;
  /** The API key's name when actor is `apikey:<id>`, e.g. `alice` (absent otherwise; added after v0.2.0, so last). */
  actorName?: string;
}

export type ListAuditResponse = ListResponse<AuditEventView>;

// ---- API keys: POST /v1/apikeys, GET /v1/apikeys, POST /v1/apikeys/:id/revoke

export interface CreateApiKeyRequest {
  role: ApiKeyRole;
  name: string;
  /** When the key stops working (ISO 8601, in the future); absent: never. */
  expiresAt?: string;
}

export interface CreateApiKeyResponse {
  id: string;
  name: string;
  role: ApiKeyRole;
  /** `ctk_…`, shown only in this response. */
  key: string;
  expiresAt: string | null;
}

/** Derived, not stored, in this order of precedence: revoked > expired > active. */
export const API_KEY_STATUSES = ['active', 'expired', 'revoked'] as const;
export type ApiKeyStatus = (typeof API_KEY_STATUSES)[number];

export interface ApiKeyView {
  id: string;
  name: string;
  role: ApiKeyRole;
  createdAt: string;
  createdBy: string;
  revokedAt: string | null;
  lastUsedAt: string | null;
  expiresAt: string | null;
  status: ApiKeyStatus;
}

/** Every key, in one page. */
export interface ListApiKeysResponse {
  items: ApiKeyView[];
}

export interface RevokeApiKeyRequest {
  /** Revoke the last active admin key too (then only `certunnel apikey create --data` on the broker's host makes another). */
  force?: boolean;
}

export interface RevokeApiKeyResponse {
  key: ApiKeyView;
  /** True if the key was revoked before: nothing changed. */
  alreadyRevoked: boolean;
}
