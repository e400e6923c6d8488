/**
 * Provisioning errors carry a stable code (tests assert codes, never text)
 * and the CLI's exit status. Messages never contain a token secret.
 */
export type ProvisionErrorCode =
  | 'BAD_ARGUMENT'
  | 'MANIFEST_INVALID'
  | 'MANIFEST_MISMATCH'
  | 'BATCH_NOT_EMPTY'
  | 'BATCH_LOCKED'
  | 'BROKER_MISMATCH'
  | 'MINT_FAILED'
  | 'BUNDLE_INVALID'
  | 'SERIAL_MISMATCH'
  | 'IMAGE_INVALID'
  | 'IMAGE_FLASHED'
  | 'IMAGE_ENROLLED'
  | 'UNIT_MISSING'
  | 'UNIT_INVALID'
  | 'PATH_ESCAPES_ROOT';

export class ProvisionError extends Error {
  override name = 'ProvisionError';
  constructor(
    readonly code: ProvisionErrorCode,
    message: string,
    readonly exitCode = 1,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
