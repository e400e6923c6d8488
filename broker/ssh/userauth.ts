/**
 * User authentication for the embedded gateway (RFC 4252), as a pure
 * decision over what ssh2 hands us. Only "publickey" with an Ed25519
 * OpenSSH user certificate (PROTOCOL.certkeys) gets in; the certificate is
 * checked by authorize.ts and the session signature is verified here with
 * node:crypto (ssh2's server never verifies signatures itself).
 *
 * The username is ignored: any name is accepted and the certificate alone
 * decides who the peer is (its key id) and what it may do (its principal).
 * Devices and operators need no agreed-upon login name, and OpenSSH mode
 * maps every certificate to one fixed user anyway.
 */
import { ED25519, ED25519_CERT, SshReader, verifyBytes } from '../../ca/index.js';
import { checkUserCertificate, type CertificateCheckDeps, type CertRefusal, type Identity } from './authorize.js';
import type { IssuedRefusal } from './issued.js';

export type AuthRefusal =
  | CertRefusal
  /** The store's check at login (issued.ts): a certificate the CA signed but the broker did not issue as presented. */
  | IssuedRefusal
  | 'METHOD_NOT_ALLOWED'
  | 'NOT_A_CERTIFICATE'
  | 'BAD_SESSION_SIGNATURE'
  | 'TOO_MANY_ATTEMPTS'
  | 'AUTH_TIMEOUT'
  /** A valid certificate whose device (or operator certificate) already has maxSessionsPerCertificate sessions. */
  | 'TOO_MANY_SESSIONS'
  /** An injected dependency (isRevoked, clock, the store lookup) threw: refused, fail closed. */
  | 'INTERNAL_ERROR';

/** What the gateway learned from one SSH_MSG_USERAUTH_REQUEST (ssh2's AuthContext, flattened). */
export interface UserauthRequest {
  readonly method: string;
  /** publickey: the algorithm name the client announced. */
  readonly keyAlgo?: string;
  /** publickey: the key blob, here the certificate blob. */
  readonly keyBlob?: Buffer;
  /** publickey: the signature, absent in the query phase (RFC 4252 section 7). */
  readonly signature?: Buffer;
  /** publickey: session identifier + request up to the signature: what was signed. */
  readonly signedData?: Buffer;
}

export type SignatureForm = 'wrapped' | 'bare';

export type AuthDecision =
  /** "none": the RFC 4252 section 5.2 probe every client sends first to learn the methods; not an attempt. */
  | { readonly kind: 'list-methods' }
  /** Query without signature for an acceptable certificate: answer SSH_MSG_USERAUTH_PK_OK so the client signs. */
  | { readonly kind: 'key-acceptable'; readonly identity: Identity }
  | { readonly kind: 'accept'; readonly identity: Identity; readonly signatureForm: SignatureForm }
  | {
      readonly kind: 'refuse';
      readonly reason: AuthRefusal;
      /** Unverified key id and serial, for logs and audit only. */
      readonly claimed?: { readonly keyId: string; readonly serial: bigint };
    };

const ED25519_SIGNATURE_LENGTH = 64;

/**
 * The raw 64-byte Ed25519 signature from what ssh2 passes on. On the wire
 * it is `string "ssh-ed25519", string sig` (RFC 8709 section 6; for a
 * certificate the inner name is the plain key's, PROTOCOL.certkeys). ssh2
 * 1.17 strips that wrapper only when the inner name equals the announced
 * algorithm, so a signature from OpenSSH (inner "ssh-ed25519", announced
 * "ssh-ed25519-cert-v01@openssh.com") arrives still wrapped, while one from
 * a client that wrongly repeats the certificate algorithm inside arrives
 * bare. Both are the same Ed25519 signature over the same data.
 */
export function unwrapSessionSignature(signature: Buffer): { raw: Buffer; form: SignatureForm } | undefined {
  if (signature.length === ED25519_SIGNATURE_LENGTH) return { raw: signature, form: 'bare' };
  try {
    const reader = new SshReader(signature, 'session signature');
    const name = reader.text();
    const raw = reader.string();
    reader.end();
    if (name !== ED25519 || raw.length !== ED25519_SIGNATURE_LENGTH) return undefined;
    return { raw, form: 'wrapped' };
  } catch {
    return undefined;
  }
}

/** Decides one authentication request; `now` is the gateway's clock. */
export function decideUserauth(req: UserauthRequest, now: Date, deps: CertificateCheckDeps): AuthDecision {
  if (req.method === 'none') return { kind: 'list-methods' };
  if (req.method !== 'publickey' || !req.keyAlgo || !req.keyBlob) return { kind: 'refuse', reason: 'METHOD_NOT_ALLOWED' };
  if (req.keyAlgo !== ED25519_CERT) {
    return {
      kind: 'refuse',
      reason: req.keyAlgo.endsWith('-cert-v01@openssh.com') ? 'CERT_UNSUPPORTED' : 'NOT_A_CERTIFICATE',
    };
  }
  const check = checkUserCertificate(req.keyBlob, now, deps);
  if (!check.ok) return { kind: 'refuse', reason: check.reason, ...(check.claimed ? { claimed: check.claimed } : {}) };
  const { identity } = check;
  if (!req.signature) return { kind: 'key-acceptable', identity };
  const unwrapped = unwrapSessionSignature(req.signature);
  if (!unwrapped || !req.signedData || !verifyBytes(identity.publicKey, req.signedData, unwrapped.raw)) {
    return { kind: 'refuse', reason: 'BAD_SESSION_SIGNATURE', claimed: { keyId: identity.keyId, serial: identity.serial } };
  }
  return { kind: 'accept', identity, signatureForm: unwrapped.form };
}
