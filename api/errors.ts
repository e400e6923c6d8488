/**
 * The broker's error codes: API, documented in docs/api.md, never renamed.
 * Every refusal is `{"error": {"code", "message"}}` (ErrorResponse) with the
 * HTTP status below. The broker raises them (broker/core/errors.ts); clients
 * read them back as ApiError, beside the codes of the client's own failures.
 */
export const ERROR_STATUS = {
  BAD_REQUEST: 400,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  TOKEN_UNKNOWN: 401,
  TOKEN_USED: 409,
  TOKEN_EXPIRED: 410,
  TOKEN_REVOKED: 410,
  TOKEN_BINDING_MISMATCH: 403,
  KEY_UNSUPPORTED: 400,
  KEY_INVALID: 400,
  KEY_ALREADY_ENROLLED: 409,
  NAME_TAKEN: 409,
  PORT_POOL_EXHAUSTED: 503,
  DEVICE_UNKNOWN: 404,
  DEVICE_REVOKED: 403,
  DEVICE_OFFLINE: 502,
  SIGNATURE_INVALID: 401,
  REQUEST_STALE: 401,
  REQUEST_REPLAYED: 409,
  RENEWAL_GRACE_EXCEEDED: 403,
  CONFIG_INVALID: 500,
  DATA_DIR_EXISTS: 409,
  INTERNAL: 500,
  /** The store could not take the request in time (saturated, or its file locked by another process). */
  STORE_BUSY: 503,
  /** The database (PostgreSQL) cannot be reached: the request changed nothing; retry later. */
  STORE_UNAVAILABLE: 503,
  /** init: the PostgreSQL database already holds a fleet (join it as a node instead). */
  DATABASE_IN_USE: 409,
  /** The device's tunnel is up, but its HTTP service refused or did not answer (or the device forwards no http slot). */
  DEVICE_SERVICE_UNAVAILABLE: 502,
  /** Too many failed authentication attempts from one address (the proxy's login and bearer keys); Retry-After says when to try again. */
  RATE_LIMITED: 429,
  /** (HTTP proxy) The device's web service answered with a response the broker does not relay: an invalid status line, header or framing, or endless 1xx. */
  DEVICE_RESPONSE_INVALID: 502,
  /** (HTTP proxy) A request whose framing the proxy would change (a transfer coding other than chunked alone). */
  REQUEST_FRAMING_REFUSED: 400,
  /** An unsafe method (or a WebSocket upgrade) through the proxy whose Origin, or Sec-Fetch-Site, is not the device hostname's own origin (cross-device CSRF). */
  CROSS_ORIGIN_REFUSED: 403,
  /** A sign-in code presented on a device hostname is unknown, already used, expired, or for another device. */
  LOGIN_CODE_INVALID: 400,
  /** (Console single sign-on) The provider signed the user in, but no value of the groups claim maps to a role (config oidc.roles). */
  OIDC_NO_ROLE: 403,
  /** (Console single sign-on) The callback's state is missing, tampered with, already used, or from another browser: nothing was done; sign in again. */
  OIDC_STATE_INVALID: 400,
  /** (Console single sign-on) The sign-in took longer than oidc.loginTimeoutSeconds at the provider: sign in again. */
  OIDC_STATE_EXPIRED: 400,
  /** (Console single sign-on) The identity provider answered the sign-in with an error (access_denied, login_required, …). */
  OIDC_PROVIDER_REFUSED: 403,
  /** (Console single sign-on) The provider's token answer or ID token did not pass validation (code already used, wrong issuer, audience, nonce, signature). */
  OIDC_TOKEN_INVALID: 401,
  /** (Console single sign-on) The identity provider could not be reached, or answered what is not OpenID Connect. */
  OIDC_PROVIDER_UNAVAILABLE: 502,
  /** The API key is right but past its expiresAt. */
  API_KEY_EXPIRED: 401,
  /** The API key is right but revoked. */
  API_KEY_REVOKED: 401,
  /** A key of role proxy opens device web pages only; every API route refuses it. */
  API_KEY_PROXY_ONLY: 403,
  /** Revoking the last active admin key needs {"force": true}. */
  LAST_ADMIN_KEY: 409,
  /** (Console) A POST, PUT or DELETE made with a console session cookie without its CSRF token (X-CSRF-Token) or from another origin. */
  CSRF_TOKEN_INVALID: 403,
  /** (CLI) Another running broker holds the data directory's lock; the message names its pid. */
  DATA_DIR_LOCKED: 409,
  /** (CLI, join) The node join token is malformed, unknown, already used or expired (which of these is not said). */
  NODE_TOKEN_INVALID: 401,
  /** (CLI, join) The cluster's sealed files do not decrypt under the token (tampered with in the database): nothing was written. */
  NODE_TOKEN_SEAL_INVALID: 422,
  /** (CLI, join, node token) The database is not a certunnel cluster's (no fleet in it, or a data directory on SQLite). */
  NOT_A_CLUSTER: 409,
  /** (CLI) `store migrate`: the data directory already keeps its store in PostgreSQL (database.url, or CERTUNNEL_DATABASE_URL). */
  STORE_ALREADY_MIGRATED: 409,
  /** (CLI) `store migrate`: the target database holds tables or rows already (not another fleet's: that is DATABASE_IN_USE). */
  DATABASE_NOT_EMPTY: 409,
  /** (CLI) `store migrate`: PostgreSQL refused a row, or the schemas differ; the copy was rolled back, nothing changed. */
  MIGRATION_COPY_FAILED: 500,
  /** (CLI) `store migrate`: the copy read back does not match the SQLite file (counts or checksums); rolled back, nothing changed. */
  MIGRATION_VERIFY_FAILED: 500,
  /** (Rotations) A rotation is under way already (one root at a time, cluster-wide): commit or roll it back first. */
  ROTATION_IN_PROGRESS: 409,
  /** (Rotations) No rotation is under way. */
  ROTATION_NOT_FOUND: 404,
  /** (Rotations) Commit before the learn phase: not every up node has loaded the next key yet. */
  ROTATION_NOT_READY: 409,
  /** (Rotations) Commit while active devices have not learned the next trust; the message says how many; {"force": true} commits anyway. */
  ROTATION_DEVICES_LAGGING: 409,
  /** (Rotations) This root cannot be rotated by this broker (api-tls when the API's TLS is not the broker's own). */
  ROTATION_UNSUPPORTED: 409,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** The body of every refusal. */
export interface ErrorResponse {
  error: { code: ErrorCode; message: string };
}

/**
 * What the client (api/client.ts) reports when there is no broker refusal to
 * read: the TLS key is not the pinned one, no pin for a certificate the
 * system CAs do not vouch for (TLS_PIN_REQUIRED), no connection or answer in time,
 * an oversized answer, or HTTP_<status> for a refusal without a JSON body.
 */
export type ClientErrorCode = 'PIN_MISMATCH' | 'TLS_PIN_REQUIRED' | 'UNREACHABLE' | 'TIMEOUT' | 'RESPONSE_TOO_LARGE' | `HTTP_${string}`;

export type ApiErrorCode = ErrorCode | ClientErrorCode;

/** What a client sees: a refusal from the broker (its ErrorCode) or a failure of its own (ClientErrorCode). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly code: ApiErrorCode,
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}
