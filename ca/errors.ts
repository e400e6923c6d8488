/**
 * Errors raised by ca/. The code is API: callers (the broker, the agent, the
 * CLI) map it to their own responses and tests assert it, never the message.
 * Messages never contain key material, tokens or whole certificates.
 */
export type CaErrorCode =
  | 'KEY_UNSUPPORTED'
  | 'KEY_INVALID'
  | 'KEY_ENCRYPTED'
  | 'KEY_BAD_PASSPHRASE'
  | 'WIRE_MALFORMED'
  | 'CERT_MALFORMED'
  | 'CERT_UNSUPPORTED'
  | 'CERT_BAD_SIGNATURE'
  | 'CERT_UNKNOWN_CA'
  | 'CERT_WRONG_TYPE'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  | 'CERT_PRINCIPAL_MISMATCH'
  | 'CERT_UNKNOWN_CRITICAL_OPTION'
  | 'CERT_PROFILE_VIOLATION'
  | 'KRL_INVALID'
  | 'SSHSIG_MALFORMED'
  | 'SSHSIG_NAMESPACE_MISMATCH'
  | 'SSHSIG_BAD_SIGNATURE'
  | 'SSHSIG_UNSUPPORTED'
  | 'SSHSIG_WRONG_KEY';

export class CaError extends Error {
  override name = 'CaError';
  constructor(
    readonly code: CaErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export function isCaError(err: unknown, code?: CaErrorCode): err is CaError {
  return err instanceof CaError && (code === undefined || err.code === code);
}
