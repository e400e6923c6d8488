/** The store's public surface: openStore, the Store/StoreTx types, and iterating active devices. */
export { openStore } from './open.js';
export type * from './types.js';
export { activeDevices } from './iterate.js';
