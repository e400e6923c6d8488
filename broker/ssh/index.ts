/** The embedded SSH gateway: the only broker module that imports ssh2. */
export { createGateway } from './gateway.js';
export { HOST_CERT_ALGORITHM, type HostIdentity } from './host-identity.js';
export {
  DEFAULT_LIMITS,
  type AuditEvent,
  type Gateway,
  type GatewayDeps,
  type GatewayLimits,
  type GatewayLogger,
  type NamedDevice,
  type PresenceUpdate,
} from './types.js';
export type { SessionInfo } from './session.js';
export type { ByteCounters, ConnectionRefusal, GatewayStats } from './stats.js';
export type { AuthRefusal, SignatureForm } from './userauth.js';
export { checkIssued, type IssuedCertificate, type IssuedRefusal, type LookupIssued } from './issued.js';
export {
  authorizeChannel,
  authorizeDirectTcpip,
  authorizeForward,
  authorizeGlobalRequest,
  authorizeReach,
  authorizeTakeover,
  resolveNamedTarget,
  checkDeviceCertificate,
  checkOperatorCertificate,
  checkUserCertificate,
  type CertRefusal,
  type ChannelRefusal,
  type DeviceIdentity,
  type DirectTcpipRefusal,
  type ForwardRefusal,
  type NamedTargetRefusal,
  type ReachRefusal,
  type TakeoverRefusal,
  type Identity,
  type OperatorIdentity,
} from './authorize.js';
export { RelayServer, RelayRefusal, type RelayServerDeps } from './relay-server.js';
export { RelayClient, RelayDialError, type RelayClientDeps, type RelayPeer } from './relay-client.js';
export {
  authorizeNodePeer,
  authorizeRelayTarget,
  checkNodeCertificate,
  nodeLiveness,
  parseRelayTarget,
  formatRelayStatus,
  parseRelayStatus,
  type NodeCertRefusal,
  type NodeIdentity as RelayNodeIdentity,
  type NodePeerRefusal,
  type RegisteredNode,
  type RelayTargetRefusal,
} from './relay-authorize.js';
