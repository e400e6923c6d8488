/** The public surface of ca/: everything outside ca/ imports from here. */
export * from './errors.js';
export { SshReader, SshWriter } from './wire.js';
export { writeFileAtomic } from './atomic-file.js';
export * from './keys.js';
