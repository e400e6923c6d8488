/**
 * The public surface of api/, the HTTP contract between the broker and its
 * clients (the agent, the CLI, provisioning). One file per part:
 *
 *   device.ts    enroll, renew (and the renewal message), GET /v1/ca, health
 *   operator.ts  tokens, devices, audit, API keys
 *   cluster.ts   the broker nodes of a cluster
 *   rotation.ts  rotations of the trust roots
 *   access.ts    operator certificates, the nginx authorize headers
 *   tunnel.ts    what devices and operators do on the SSH server: logins,
 *                the loopback address, port-block slots, device names
 *   errors.ts    the error codes and their HTTP statuses, ApiError
 *   console.ts   labels, certificate history, batches, broker status, the console session
 *   client.ts    the JSON client with TLS pinning
 */
export * from './device.js';
export * from './operator.js';
export * from './cluster.js';
export * from './rotation.js';
export * from './access.js';
export * from './tunnel.js';
export * from './errors.js';
export * from './console.js';
export { apiRequest, type ApiCall, type ApiClientOptions } from './client.js';
