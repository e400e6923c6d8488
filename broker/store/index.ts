/** The store's public surface: openStore, the Store/StoreTx types, and pure helpers. */
export { openStore } from './open.js';
export { tokenStatus } from './tokens.js';
export type * from './types.js';
export { activeDevices } from './iterate.js';
