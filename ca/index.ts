/** The public surface of ca/: everything outside ca/ imports from here. */
export * from './errors.js';
export { SshReader, SshWriter } from './wire.js';
export { writeFileAtomic } from './atomic-file.js';
export * from './keys.js';
export * from './cert.js';
export * from './profiles.js';
export { describeCertificate } from './describe.js';
export { encodeKrl, writeKrl, type KrlInput } from './krl.js';
export { SSHSIG_HASHES, signSshsig, parseSshsig, verifySshsig, type SshsigHash, type SshsigVerified, type ParsedSshsig } from './sshsig.js';
export { tlsPinOfSpki, isTlsPin } from './tls-pin.js';
