/** Building a signed renewal request (the device side of POST /v1/renew). */
import { randomBytes } from 'node:crypto';
import { formatPublicKey, signSshsig, type KeyPair } from '../ca/index.js';
import { RENEW_NAMESPACE, renewMessage, type RenewRequest } from '../api/index.js';

export interface RenewRequestOptions {
  readonly deviceId: string;
  readonly key: KeyPair;
  /** Key rotation: the new key, which signs the same message too. */
  readonly newKey?: KeyPair;
  readonly now?: Date;
  readonly nonce?: string;
}

export function buildRenewRequest(options: RenewRequestOptions): RenewRequest {
  const fields = {
    deviceId: options.deviceId,
    timestamp: Math.floor((options.now ?? new Date()).getTime() / 1000),
    nonce: options.nonce ?? randomBytes(18).toString('base64url'),
    newPublicKey: options.newKey ? formatPublicKey(options.newKey.publicKey) : undefined,
  };
  const message = renewMessage(fields);
  const request: RenewRequest = { ...fields, signature: signSshsig(message, options.key, RENEW_NAMESPACE) };
  if (options.newKey) request.newKeySignature = signSshsig(message, options.newKey, RENEW_NAMESPACE);
  else delete request.newPublicKey;
  return request;
}
