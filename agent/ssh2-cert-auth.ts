/**
 * OpenSSH certificate authentication for the ssh2 1.17 client.
 *
 * As shipped, ssh2's client cannot log in with a certificate
 * (mscdex/ssh2#551): Protocol.authPK() writes the announced algorithm name
 * into the signature blob too, so a certificate login signs as
 * `string "ssh-ed25519-cert-v01@openssh.com", string sig` where
 * PROTOCOL.certkeys wants the plain key's format, `string "ssh-ed25519",
 * string sig` (RFC 8709 section 6). sshd answers "key type does not match".
 *
 * This shim announces the certificate (algorithm
 * ssh-ed25519-cert-v01@openssh.com, blob = the certificate) and, for the
 * signed request only, writes the SSH_MSG_USERAUTH_REQUEST itself with the
 * correct signature blob. It reaches into ssh2 internals (the client's
 * Protocol instance, its packet writer and sendPacket), so it refuses to
 * load with any ssh2 version other than the one it was written against.
 */
import { createRequire } from 'node:module';
import { sign } from 'node:crypto';
import ssh2 from 'ssh2';
import type { AuthHandlerMiddleware, Client, ParsedKey } from 'ssh2';
import { ED25519, ED25519_CERT, SshWriter, encodePrivateKey, parseCertificate, type Certificate, type KeyPair } from '../ca/index.js';

const require = createRequire(import.meta.url);

export const SUPPORTED_SSH2_VERSION = '1.17.0';

/** Throws unless VERSION is the ssh2 release whose internals this shim patches. */
export function checkSsh2Version(version: string): void {
  if (version !== SUPPORTED_SSH2_VERSION) {
    throw new Error(
      `agent/ssh2-cert-auth.ts patches ssh2 ${SUPPORTED_SSH2_VERSION} internals but ssh2 ${version} is installed; ` +
        'review the shim against the new release (or use the OpenSSH client) before changing the pin',
    );
  }
}

checkSsh2Version((require('ssh2/package.json') as { version: string }).version);

/** The parts of ssh2's Protocol (lib/protocol/Protocol.js) the shim touches. */
interface ProtocolInternals {
  authPK(username: string, pubKey: unknown, keyAlgo?: unknown, cbSign?: unknown): void;
  readonly _kex: { readonly sessionID: Buffer };
  readonly _authsQueue: string[];
  readonly _packetRW: {
    readonly write: { readonly allocStart: number; alloc(length: number): Buffer; finalize(packet: Buffer): Buffer };
  };
}

const { sendPacket } = require('ssh2/lib/protocol/utils.js') as { sendPacket(proto: ProtocolInternals, packet: Buffer): void };
const { MESSAGE } = require('ssh2/lib/protocol/constants.js') as { MESSAGE: { USERAUTH_REQUEST: number } };

export interface CertificateAuthOptions {
  readonly username: string;
  readonly key: KeyPair;
  /** The certificate for KEY: parsed, its blob, or its one-line text form. */
  readonly certificate: Certificate | Buffer | string;
}

function certificateBlob(certificate: CertificateAuthOptions['certificate']): Buffer {
  if (Buffer.isBuffer(certificate)) return certificate;
  if (typeof certificate === 'string') return Buffer.from(certificate.trim().split(/\s+/)[1] ?? '', 'base64');
  return certificate.blob;
}

/**
 * An authHandler for `client.connect({ authHandler })` that logs in with
 * the certificate and nothing else: when the server refuses it, the
 * handler reports no further method and ssh2 fails with "All configured
 * authentication methods failed".
 */
export function certificateAuthHandler(client: Client, options: CertificateAuthOptions): AuthHandlerMiddleware {
  const blob = certificateBlob(options.certificate);
  const cert = parseCertificate(blob); // throws CERT_MALFORMED / CERT_UNSUPPORTED early
  if (!cert.publicKey.equals(options.key.publicKey)) throw new Error('the certificate does not certify this key');

  // ssh2's parseKey() passes through objects carrying its private "parsed"
  // marker; this one inherits it from the real key and announces the
  // certificate instead of the plain key (the query phase needs no more).
  const parsed = ssh2.utils.parseKey(encodePrivateKey(options.key));
  if (parsed instanceof Error) throw parsed;
  const plain = Array.isArray(parsed) ? (parsed[0] as ParsedKey) : parsed;
  const certKey: ParsedKey = Object.create(plain, {
    type: { value: ED25519_CERT },
    getPublicSSH: { value: () => blob },
  }) as ParsedKey;

  let tried = false;
  return (_methodsLeft, _partialSuccess, next) => {
    if (tried) return next(false as never);
    tried = true;
    patchProtocol((client as unknown as { _protocol: ProtocolInternals })._protocol, certKey, blob, options.key);
    next({ type: 'publickey', username: options.username, key: certKey });
  };
}

const patched = new WeakSet<ProtocolInternals>();

function patchProtocol(proto: ProtocolInternals, certKey: ParsedKey, blob: Buffer, key: KeyPair): void {
  if (patched.has(proto)) return;
  patched.add(proto);
  const original = proto.authPK;
  proto.authPK = function authPK(this: ProtocolInternals, username: string, pubKey: unknown, keyAlgo?: unknown, cbSign?: unknown) {
    const signing = typeof keyAlgo === 'function' || typeof cbSign === 'function';
    if (pubKey !== certKey || !signing) {
      original.call(this, username, pubKey, keyAlgo, cbSign);
      return;
    }
    sendSignedRequest(this, username, blob, key);
  };
}

/**
 * RFC 4252 section 7: SSH_MSG_USERAUTH_REQUEST with the signature, which
 * covers the session identifier followed by the request up to (not
 * including) the signature. PROTOCOL.certkeys: the signature is the
 * certified key's, in its own format.
 */
function sendSignedRequest(proto: ProtocolInternals, username: string, blob: Buffer, key: KeyPair): void {
  const request = new SshWriter()
    .byte(MESSAGE.USERAUTH_REQUEST)
    .string(username)
    .string('ssh-connection')
    .string('publickey')
    .byte(1) // TRUE: a signature follows
    .string(ED25519_CERT)
    .string(blob)
    .toBuffer();
  const signed = new SshWriter().string(proto._kex.sessionID).raw(request).toBuffer();
  const signature = new SshWriter().string(ED25519).string(sign(null, signed, key.privateKey)).toBuffer();
  const payload = new SshWriter().raw(request).string(signature).toBuffer();
  const writer = proto._packetRW.write;
  const start = writer.allocStart;
  const packet = writer.alloc(payload.length);
  payload.copy(packet, start);
  proto._authsQueue.push('publickey');
  sendPacket(proto, writer.finalize(packet));
}
