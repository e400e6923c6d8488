/** The public surface of ca/: everything outside ca/ imports from here. */
export * from './errors.js';
export { SshReader, SshWriter } from './wire.js';
export { writeFileAtomic } from './atomic-file.js';
export * from './keys.js';
export * from './cert.js';
export * from './profiles.js';
export { describeCertificate } from './describe.js';
