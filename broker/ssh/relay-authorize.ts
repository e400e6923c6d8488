/**
 * The node-to-node link's policy as pure decisions (docs/cluster.md,
 * "Reaching devices through any node"): which peer is a node of this
 * cluster, and which target a node may ask another to connect. No ssh2, no
 * sockets; relay-server.ts and relay-client.ts translate protocol events
 * into these calls, and anything they do not know is refused.
 *
 * A peer is a node when its certificate is one the cluster's user CA signed
 * with key id and one principal node:<id>, no critical option and no
 * extension, valid now, not revoked, for a node the registry knows, that has
 * not stopped and is not down, whose registered relay key is the certified key.
 */
import {
  isCaError,
  maxValidity,
  NODE_CERT_MAX_VALIDITY_S,
  BACKDATE_S,
  nonZeroSerial,
  parseCertificate,
  parseNodePrincipal,
  parsePublicKey,
  verifyCertificate,
  type Certificate,
  type PublicKey,
} from '../../ca/index.js';
import { inBlock } from '../core/port-pool.js';
import type { CaCertRefusal, Decision } from './authorize.js';

export type NodeCertRefusal =
  | CaCertRefusal
  /** Key id and principal are not both node:<the same id>, or the certificate carries an extension. */
  | 'NOT_A_NODE'
  | 'SERIAL_ZERO'
  | 'VALIDITY_TOO_LONG'
  | 'REVOKED';

export interface NodeIdentity {
  readonly nodeId: string;
  readonly keyId: string;
  readonly serial: bigint;
  readonly publicKey: PublicKey;
  /** Seconds since the epoch. */
  readonly validBefore: bigint;
}

export interface NodeCertDeps {
  readonly trustedCaKeys: readonly PublicKey[];
  isRevoked(cert: { serial: bigint; keyId: string }): boolean;
}

const CA_CODES: ReadonlySet<string> = new Set<NodeCertRefusal>([
  'CERT_MALFORMED', 'CERT_UNSUPPORTED', 'CERT_UNKNOWN_CA', 'CERT_BAD_SIGNATURE', 'CERT_WRONG_TYPE', 'CERT_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNKNOWN_CRITICAL_OPTION',
]);

function caRefusal(err: unknown): NodeCertRefusal {
  if (isCaError(err)) return CA_CODES.has(err.code) ? (err.code as NodeCertRefusal) : 'CERT_MALFORMED';
  throw err;
}

/** A node certificate, parsed (a blob) or as it is. The signature is checked before anything it covers is believed. */
export function checkNodeCertificate(
  input: Buffer | Certificate,
  now: Date,
  deps: NodeCertDeps,
): { readonly ok: true; readonly identity: NodeIdentity } | { readonly ok: false; readonly reason: NodeCertRefusal } {
  let cert: Certificate;
  try {
    cert = Buffer.isBuffer(input) ? parseCertificate(input) : input;
    verifyCertificate(cert, { trustedCaKeys: deps.trustedCaKeys, type: 'user', now });
  } catch (err) {
    return { ok: false, reason: caRefusal(err) };
  }
  const nodeId = cert.principals.length === 1 ? parseNodePrincipal(cert.principals[0]!) : undefined;
  if (!nodeId || cert.keyId !== cert.principals[0] || Object.keys(cert.extensions).length > 0) return { ok: false, reason: 'NOT_A_NODE' };
  for (const [reason, rule] of [['SERIAL_ZERO', nonZeroSerial], ['VALIDITY_TOO_LONG', maxValidity(NODE_CERT_MAX_VALIDITY_S + BACKDATE_S)]] as const) {
    try {
      rule(cert);
    } catch (err) {
      if (isCaError(err)) return { ok: false, reason };
      throw err;
    }
  }
  if (deps.isRevoked({ serial: cert.serial, keyId: cert.keyId })) return { ok: false, reason: 'REVOKED' };
  return { ok: true, identity: { nodeId, keyId: cert.keyId, serial: cert.serial, publicKey: cert.publicKey, validBefore: cert.validBefore } };
}

/** A node as the registry (the store's nodes table) has it, reduced to what the link's rules read. */
export interface RegisteredNode {
  readonly id: string;
  /** The relay key the node registered (an OpenSSH public key line); null: it offers no link. */
  readonly relayKey: string | null;
  readonly internalAddress: string | null;
  readonly heartbeatAt: Date;
  readonly stoppedAt: Date | null;
}

export type NodePeerRefusal = 'NODE_UNKNOWN' | 'NODE_STOPPED' | 'NODE_DOWN' | 'NODE_KEY_MISMATCH';

/** Is NODE (undefined: the registry has no such node) live by its heartbeat at NOW? */
export function nodeLiveness(node: RegisteredNode | undefined, now: Date, downAfterMs: number): Decision<'NODE_UNKNOWN' | 'NODE_STOPPED' | 'NODE_DOWN'> {
  if (!node) return { allow: false, reason: 'NODE_UNKNOWN' };
  if (node.stoppedAt !== null) return { allow: false, reason: 'NODE_STOPPED' };
  if (now.getTime() - node.heartbeatAt.getTime() > downAfterMs) return { allow: false, reason: 'NODE_DOWN' };
  return { allow: true };
}

/** The registered relay key, parsed; undefined when there is none or it is not a key. */
function registeredKey(node: RegisteredNode): PublicKey | undefined {
  if (!node.relayKey) return undefined;
  try {
    return parsePublicKey(node.relayKey);
  } catch {
    return undefined;
  }
}

/**
 * May the holder of IDENTITY (checkNodeCertificate allowed it), connecting or
 * answering as KEY, act as a node of this cluster? Only a registered, live
 * node whose registered relay key is KEY: a certificate of a node that
 * re-keyed, or one the CA signed for a node the registry does not know (or
 * no longer knows: removed), gets nothing.
 */
export function authorizeNodePeer(identity: NodeIdentity, node: RegisteredNode | undefined, now: Date, downAfterMs: number): Decision<NodePeerRefusal> {
  const live = nodeLiveness(node, now, downAfterMs);
  if (!live.allow) return live;
  const key = registeredKey(node!);
  if (!key || !key.equals(identity.publicKey)) return { allow: false, reason: 'NODE_KEY_MISMATCH' };
  return { allow: true };
}

// ---------------------------------------------------------------------------
// Relay requests: a direct-tcpip channel whose target host is a device id and whose port is one of its block

export type RelayTargetRefusal = 'BAD_REQUEST' | 'DEVICE_UNKNOWN' | 'DEVICE_REVOKED' | 'PORT_NOT_OWNED';

const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The target a relay request names, checked for shape only. */
export function parseRelayTarget(host: string, port: number): { readonly deviceId: string; readonly port: number } | undefined {
  if (!DEVICE_ID.test(host) || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { deviceId: host, port };
}

/** A device as the store has it, reduced to what the relay's rule reads. */
export interface RelayDevice {
  readonly status: string;
  readonly portFirst: number | null;
  readonly portLast: number | null;
}

/**
 * May a node have this node connect PORT of DEVICE (undefined: no such
 * device)? Only an active device that is not revoked (REVOKEDNOW: the
 * in-memory deny, which a revocation sets before anything is written), and
 * only a port of its block. Whether its tunnel is here is for the caller,
 * which then connects exactly as a local operator connection would.
 */
export function authorizeRelayTarget(device: RelayDevice | undefined, port: number, revokedNow: boolean): Decision<RelayTargetRefusal> {
  if (!device) return { allow: false, reason: 'DEVICE_UNKNOWN' };
  if (revokedNow || device.status !== 'active') return { allow: false, reason: 'DEVICE_REVOKED' };
  if (device.portFirst === null || device.portLast === null || !inBlock(port, { first: device.portFirst, last: device.portLast })) {
    return { allow: false, reason: 'PORT_NOT_OWNED' };
  }
  return { allow: true };
}

/**
 * The relay's answer, the first line a relayed channel carries (SSH's own
 * channel-open failure has no room for a reason of ours): "ok", or
 * "refused <CODE>". Anything else from a peer is a protocol error.
 */
export const RELAY_OK = 'certunnel-relay ok';
export const RELAY_REFUSED = 'certunnel-relay refused';
const STATUS = /^certunnel-relay (ok|refused ([A-Z_]{1,40}))$/;

export function formatRelayStatus(code: string | null): string {
  return `${code === null ? RELAY_OK : `${RELAY_REFUSED} ${code}`}\n`;
}

/** LINE (without its newline) as the relay's answer: null for ok, the code when refused; undefined if it is no answer. */
export function parseRelayStatus(line: string): { readonly code: string | null } | undefined {
  const m = STATUS.exec(line);
  if (!m) return undefined;
  return { code: m[1] === 'ok' ? null : m[2]! };
}
