/**
 * Broker errors carry a stable code (api/errors.ts: API, documented in
 * docs/api.md, never renamed) and its HTTP status. One middleware renders
 * them as {"error": {"code", "message"}}; messages never contain secrets.
 */
import { ERROR_STATUS, type ErrorCode } from '../../api/index.js';

export { ERROR_STATUS, type ErrorCode };

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
