/**
 * Broker errors carry a stable code (API: documented in README, never
 * renamed) and an HTTP status. One middleware renders them as
 * {"error": {"code", "message"}}; messages never contain secrets.
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
  /** The device's tunnel is up, but its HTTP service refused or did not answer (or the device forwards no http slot). */
  DEVICE_SERVICE_UNAVAILABLE: 502,
  /** Too many failed authentication attempts from one address (the proxy's login and bearer keys); Retry-After says when to try again. */
  RATE_LIMITED: 429,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class BrokerError extends Error {
  override name = 'BrokerError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

export function isBrokerError(err: unknown, code?: ErrorCode): err is BrokerError {
  return err instanceof BrokerError && (code === undefined || err.code === code);
}
