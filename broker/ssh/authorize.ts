/**
 * The embedded gateway's policy as pure decisions: which certificates may
 * authenticate, which forwards and channels they may open, when a device
 * takes over a port its older session holds, and which ports an operator
 * may reach. No ssh2, no sockets: the gateway translates protocol events
 * into these calls, and anything these functions do not know is denied.
 *
 * Long file: one table of decisions, each short and table-tested; split by
 * protocol phase it would scatter the shared deny/Decision helpers.
 */
import {
  BACKDATE_S,
  DEVICE_CERT_MAX_VALIDITY_S,
  isCaError,
  maxValidity,
  nonZeroSerial,
  OPERATOR_CERT_MAX_VALIDITY_S,
  parseCertificate,
  parsePortPrincipal,
  verifyCertificate,
  type CaErrorCode,
  type Certificate,
  type CertRule,
  type PortBlock,
  type PublicKey,
} from '../../ca/index.js';
import { slotPort, TUNNEL_HOST } from '../../api/index.js';
import { inBlock, isPoolBlock, SERVICE_PORT_SLOTS, type PortPool } from '../core/port-pool.js';

export type Decision<R extends string> = { readonly allow: true } | { readonly allow: false; readonly reason: R };

const ALLOW = Object.freeze({ allow: true as const });

function deny<R extends string>(reason: R): Decision<R> {
  return { allow: false, reason };
}

// ---------------------------------------------------------------------------
// Certificates

/** The refusals verifyCertificate decides, for any certificate a login presents (a device's, an operator's, a node's). */
export type CaCertRefusal = Extract<
  CaErrorCode,
  | 'CERT_MALFORMED'
  | 'CERT_UNSUPPORTED'
  | 'CERT_UNKNOWN_CA'
  | 'CERT_BAD_SIGNATURE'
  | 'CERT_WRONG_TYPE'
  | 'CERT_EXPIRED'
  | 'CERT_NOT_YET_VALID'
  | 'CERT_UNKNOWN_CRITICAL_OPTION'
>;

/** Why a user certificate may not open a session. CA codes come from verifyCertificate. */
export type CertRefusal =
  | CaCertRefusal
  | 'KEY_ID_INVALID'
  | 'PRINCIPAL_INVALID'
  | 'PRINCIPAL_OUTSIDE_POOL'
  | 'FORWARDING_NOT_PERMITTED'
  | 'SERIAL_ZERO'
  | 'VALIDITY_TOO_LONG'
  | 'REVOKED';

export interface CertificateCheckDeps {
  readonly trustedCaKeys: readonly PublicKey[];
  /**
   * When given, a principal must name one block of the pool exactly, as in
   * OpenSSH mode, whose principals files list only those blocks: a
   * certificate for any other range (signed by hand, or before the pool was
   * reconfigured) gets in neither way.
   */
  readonly pool?: PortPool;
  /** Synchronous and in memory: the control plane keeps the revocation set fresh. */
  isRevoked(cert: { serial: bigint; keyId: string }): boolean;
}

interface IdentityBase {
  readonly keyId: string;
  readonly serial: bigint;
  /** The certificate's one principal, ports-A-B or reach-A-B. */
  readonly principal: string;
  readonly block: PortBlock;
  /** Seconds since the epoch (PROTOCOL.certkeys valid_after, valid_before). */
  readonly validAfter: bigint;
  readonly validBefore: bigint;
  /** The certified Ed25519 key: the session signature must verify with it. */
  readonly publicKey: PublicKey;
  /** The user CA that signed the certificate (a session of a CA retired by a rotation is ended). */
  readonly signatureKey: PublicKey;
}

export interface DeviceIdentity extends IdentityBase {
  readonly role: 'device';
  readonly deviceId: string;
}

export interface OperatorIdentity extends IdentityBase {
  readonly role: 'operator';
  readonly operator: string;
  /** The device whose block the operator may reach. */
  readonly deviceId: string;
}

export type Identity = DeviceIdentity | OperatorIdentity;

export type CertCheck<I extends Identity> = { readonly ok: true; readonly identity: I } | { readonly ok: false; readonly reason: CertRefusal };

const DEVICE_KEY_ID = /^device:([A-Za-z0-9_-]{1,64})$/;
// profiles.ts writes operator:<sanitised name>:device:<deviceId>.
const OPERATOR_KEY_ID = /^operator:([A-Za-z0-9_.@-]{1,128}):device:([A-Za-z0-9_-]{1,64})$/;

const CA_REFUSALS: ReadonlySet<string> = new Set<CertRefusal>([
  'CERT_MALFORMED', 'CERT_UNSUPPORTED', 'CERT_UNKNOWN_CA', 'CERT_BAD_SIGNATURE', 'CERT_WRONG_TYPE',
  'CERT_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNKNOWN_CRITICAL_OPTION',
]);

function caRefusal(err: unknown): CertRefusal {
  if (isCaError(err) && CA_REFUSALS.has(err.code)) return err.code as CertRefusal;
  // Anything else ca/ throws while verifying is a certificate we cannot read.
  if (isCaError(err)) return 'CERT_MALFORMED';
  throw err;
}

/**
 * The checks shared by device and operator certificates, in the order that
 * keeps the signature first: nothing the CA signed is believed before
 * verifyCertificate has checked the signature, type and validity window.
 * No critical option is supported, so any (force-command, source-address…)
 * refuses the certificate rather than being silently ignored.
 */
function checkCommon(
  cert: Certificate,
  now: Date,
  deps: CertificateCheckDeps,
  kind: 'ports' | 'reach',
): { ok: true; block: PortBlock } | { ok: false; reason: CertRefusal } {
  try {
    verifyCertificate(cert, { trustedCaKeys: deps.trustedCaKeys, type: 'user', now });
  } catch (err) {
    return { ok: false, reason: caRefusal(err) };
  }
  const parsed = cert.principals.length === 1 ? parsePortPrincipal(cert.principals[0]!) : undefined;
  if (!parsed || parsed.kind !== kind) return { ok: false, reason: 'PRINCIPAL_INVALID' };
  if (deps.pool && !isPoolBlock(parsed.block, deps.pool)) return { ok: false, reason: 'PRINCIPAL_OUTSIDE_POOL' };
  // sshd refuses port forwarding to a certificate without this extension;
  // the embedded gateway gives the same verdict (DESIGN: one policy, two modes).
  if (!('permit-port-forwarding' in cert.extensions)) return { ok: false, reason: 'FORWARDING_NOT_PERMITTED' };
  const overLimit = profileRefusal(cert, kind);
  if (overLimit) return { ok: false, reason: overLimit };
  if (deps.isRevoked({ serial: cert.serial, keyId: cert.keyId })) return { ok: false, reason: 'REVOKED' };
  return { ok: true, block: parsed.block };
}

/** What every identity carries from its (already checked) certificate. */
function identityBase(cert: Certificate, block: PortBlock) {
  return {
    keyId: cert.keyId, serial: cert.serial, principal: cert.principals[0]!, block,
    validAfter: cert.validAfter, validBefore: cert.validBefore, publicKey: cert.publicKey, signatureKey: cert.signatureKey,
  };
}

/**
 * The CA profile's own limits (ca/profiles.ts), checked again at login:
 * defence in depth against a certificate the CA should never have signed
 * (a bug, a misused key): serial 0 cannot be listed in a KRL, and a
 * validity longer than the profile's outlives every revocation that
 * expires its serial from the KRL.
 */
const PROFILE_LIMITS: Readonly<Record<'ports' | 'reach', ReadonlyArray<readonly [CertRefusal, CertRule]>>> = {
  ports: [['SERIAL_ZERO', nonZeroSerial], ['VALIDITY_TOO_LONG', maxValidity(DEVICE_CERT_MAX_VALIDITY_S + BACKDATE_S)]],
  reach: [['SERIAL_ZERO', nonZeroSerial], ['VALIDITY_TOO_LONG', maxValidity(OPERATOR_CERT_MAX_VALIDITY_S + BACKDATE_S)]],
};

function profileRefusal(cert: Certificate, kind: 'ports' | 'reach'): CertRefusal | undefined {
  for (const [reason, rule] of PROFILE_LIMITS[kind]) {
    try {
      rule(cert);
    } catch (err) {
      if (isCaError(err)) return reason;
      throw err;
    }
  }
  return undefined;
}

/** A device certificate: key id device:<id>, exactly one ports-A-B principal, not revoked. */
export function checkDeviceCertificate(cert: Certificate, now: Date, deps: CertificateCheckDeps): CertCheck<DeviceIdentity> {
  const common = checkCommon(cert, now, deps, 'ports');
  if (!common.ok) return common;
  const m = DEVICE_KEY_ID.exec(cert.keyId);
  if (!m) return { ok: false, reason: 'KEY_ID_INVALID' };
  return { ok: true, identity: { role: 'device', deviceId: m[1]!, ...identityBase(cert, common.block) } };
}

/** An operator certificate: key id operator:<name>:device:<id>, exactly one reach-A-B principal, not revoked. */
export function checkOperatorCertificate(cert: Certificate, now: Date, deps: CertificateCheckDeps): CertCheck<OperatorIdentity> {
  const common = checkCommon(cert, now, deps, 'reach');
  if (!common.ok) return common;
  const m = OPERATOR_KEY_ID.exec(cert.keyId);
  if (!m) return { ok: false, reason: 'KEY_ID_INVALID' };
  return { ok: true, identity: { role: 'operator', operator: m[1]!, deviceId: m[2]!, ...identityBase(cert, common.block) } };
}

/**
 * Parses and checks a certificate blob as presented in SSH_MSG_USERAUTH_REQUEST;
 * the key id's prefix picks the profile (device or operator). `claimed`
 * carries the unverified key id and serial for logs, when they could be read.
 */
export function checkUserCertificate(
  blob: Buffer,
  now: Date,
  deps: CertificateCheckDeps,
): CertCheck<Identity> & { readonly claimed?: { keyId: string; serial: bigint } } {
  let cert: Certificate;
  try {
    cert = parseCertificate(blob);
  } catch (err) {
    return { ok: false, reason: caRefusal(err) };
  }
  const claimed = { keyId: cert.keyId, serial: cert.serial };
  const check = cert.keyId.startsWith('operator:')
    ? checkOperatorCertificate(cert, now, deps)
    : checkDeviceCertificate(cert, now, deps);
  return { ...check, claimed };
}

// ---------------------------------------------------------------------------
// Remote forwards (RFC 4254 section 7.1, "tcpip-forward")

export type ForwardRefusal = 'NOT_A_DEVICE' | 'BIND_ADDRESS' | 'PORT_ZERO' | 'PORT_NOT_OWNED';

export interface ForwardRequest {
  readonly bindAddr: string;
  readonly bindPort: number;
}

/**
 * May the holder of PRINCIPAL listen on bindAddr:bindPort? Only a device
 * (ports-A-B), only the literal 127.0.0.1 ("localhost" may also mean ::1;
 * "", "0.0.0.0", "::" and "*" mean every interface, RFC 4254 section 7.1),
 * never port 0 (which asks the server to choose one), only its own ports.
 */
export function authorizeForward(principal: string, req: ForwardRequest): Decision<ForwardRefusal> {
  return authorizeLoopbackPort(principal, 'ports', req.bindAddr, req.bindPort, { role: 'NOT_A_DEVICE', address: 'BIND_ADDRESS' });
}

/**
 * The rule shared by remote forwards (devices, ports-A-B) and direct-tcpip
 * (operators, reach-A-B): the principal's kind, the literal 127.0.0.1, never
 * port 0, and only a port of the principal's block.
 */
function authorizeLoopbackPort<R extends string>(
  principal: string,
  kind: 'ports' | 'reach',
  address: string,
  port: number,
  refusals: { role: R; address: R },
): Decision<R | 'PORT_ZERO' | 'PORT_NOT_OWNED'> {
  const parsed = parsePortPrincipal(principal);
  if (!parsed || parsed.kind !== kind) return deny(refusals.role);
  if (address !== TUNNEL_HOST) return deny(refusals.address);
  if (port === 0) return deny('PORT_ZERO');
  if (!inBlock(port, parsed.block)) return deny('PORT_NOT_OWNED');
  return ALLOW;
}

// ---------------------------------------------------------------------------
// A port another session holds: the takeover rule

/** A live session as the port rules see it: its order of arrival (ids ascend) and its certificate. */
export interface SessionRef {
  readonly id: number;
  readonly identity: Pick<Identity, 'role' | 'deviceId'>;
}

export type TakeoverRefusal = 'PORT_IN_USE';

/**
 * May CLAIMANT, whose forward authorizeForward allowed, take a port that
 * HOLDER holds (or is binding) right now? Only from an older session of
 * the same device: a device that reconnects while its stale session (half
 * dead behind a NAT, say) still holds its ports takes them over, and the
 * caller closes the stale session (DESIGN "The broker's SSH server";
 * autossh, sish and frp fail there instead). Anyone else keeps the port: the
 * claimant's own session, a newer session, another device, a non-device.
 */
export function authorizeTakeover(claimant: SessionRef, holder: SessionRef): Decision<TakeoverRefusal> {
  const sameDevice = claimant.identity.role === 'device' && holder.identity.role === 'device' && claimant.identity.deviceId === holder.identity.deviceId;
  return sameDevice && holder.id < claimant.id ? ALLOW : deny('PORT_IN_USE');
}

// ---------------------------------------------------------------------------
// Global requests (RFC 4254 section 4)

export type GlobalRequestRefusal = 'STREAMLOCAL_PROHIBITED' | 'UNKNOWN_REQUEST';

/** tcpip-forward and its cancel go on to authorizeForward; every other global request is refused. */
export function authorizeGlobalRequest(name: string): Decision<GlobalRequestRefusal> {
  if (name === 'tcpip-forward' || name === 'cancel-tcpip-forward') return ALLOW;
  if (name === 'streamlocal-forward@openssh.com' || name === 'cancel-streamlocal-forward@openssh.com') {
    return deny('STREAMLOCAL_PROHIBITED');
  }
  return deny('UNKNOWN_REQUEST');
}

// ---------------------------------------------------------------------------
// Channels (RFC 4254 sections 5-7) and session requests

export type ChannelRefusal =
  | 'SESSION_PROHIBITED'
  | 'DIRECT_TCPIP_PROHIBITED'
  | 'STREAMLOCAL_PROHIBITED'
  | 'AGENT_PROHIBITED'
  | 'X11_PROHIBITED'
  | 'UNKNOWN_CHANNEL';

/**
 * Channel types and session-channel requests we recognise, each with the
 * reason it is refused to a device. A Map, so that a peer-chosen name such
 * as "constructor" never hits Object.prototype.
 */
const KNOWN_KINDS: ReadonlyMap<string, ChannelRefusal> = new Map<string, ChannelRefusal>([
  // RFC 4254 section 6: an interactive session and everything asked on it.
  ['session', 'SESSION_PROHIBITED'],
  ['exec', 'SESSION_PROHIBITED'],
  ['shell', 'SESSION_PROHIBITED'],
  ['pty-req', 'SESSION_PROHIBITED'],
  ['subsystem', 'SESSION_PROHIBITED'],
  ['env', 'SESSION_PROHIBITED'],
  ['signal', 'SESSION_PROHIBITED'],
  ['window-change', 'SESSION_PROHIBITED'],
  ['x11-req', 'X11_PROHIBITED'],
  ['x11', 'X11_PROHIBITED'],
  ['auth-agent-req@openssh.com', 'AGENT_PROHIBITED'],
  ['auth-agent@openssh.com', 'AGENT_PROHIBITED'],
  // OpenSSH PROTOCOL section 2.4: Unix socket forwarding.
  ['direct-streamlocal@openssh.com', 'STREAMLOCAL_PROHIBITED'],
  ['forwarded-streamlocal@openssh.com', 'STREAMLOCAL_PROHIBITED'],
  // RFC 4254 section 7.2: "ssh -L" / "ssh -W".
  ['direct-tcpip', 'DIRECT_TCPIP_PROHIBITED'],
]);

/**
 * May a ROLE open a channel (or make a session request) of KIND? A device
 * may open none at all: its only business is the remote forward, whose
 * forwarded-tcpip channels the gateway opens. An operator may open
 * direct-tcpip only (checked further by authorizeDirectTcpip).
 */
export function authorizeChannel(role: Identity['role'], kind: string): Decision<ChannelRefusal> {
  if (role === 'operator' && kind === 'direct-tcpip') return ALLOW;
  return deny(KNOWN_KINDS.get(kind) ?? 'UNKNOWN_CHANNEL');
}

export type DirectTcpipRefusal = 'NOT_AN_OPERATOR' | 'DEST_ADDRESS' | 'PORT_ZERO' | 'PORT_NOT_OWNED';

export interface DirectTcpipRequest {
  readonly destAddr: string;
  readonly destPort: number;
}

/** May the holder of PRINCIPAL (reach-A-B) connect to destAddr:destPort? Only 127.0.0.1 and its block. */
export function authorizeDirectTcpip(principal: string, req: DirectTcpipRequest): Decision<DirectTcpipRefusal> {
  return authorizeLoopbackPort(principal, 'reach', req.destAddr, req.destPort, { role: 'NOT_AN_OPERATOR', address: 'DEST_ADDRESS' });
}

export type ReachRefusal = 'TUNNEL_NOT_CONNECTED';

/** The session that holds a port, as the reach rule sees it. */
export interface PortHolder {
  readonly identity: Pick<Identity, 'role'>;
  /** The session is ending (its ports are being let go). */
  readonly closed: boolean;
  /** The ports it listens on now; a port still being bound is not among them. */
  readonly forwards: { has(port: number): boolean };
}

/**
 * May a connection (an operator's direct-tcpip that authorizeDirectTcpip
 * allowed, or the broker's own proxy) go to PORT, held by HOLDER (undefined:
 * nobody)? Only while a live device tunnel listens on it: never to whatever
 * else happens to listen on the broker's loopback, a port still being
 * bound, or a session on its way out.
 */
export function authorizeReach(holder: PortHolder | undefined, port: number): Decision<ReachRefusal> {
  if (!holder || holder.closed || holder.identity.role !== 'device' || !holder.forwards.has(port)) return deny('TUNNEL_NOT_CONNECTED');
  return ALLOW;
}

// ---------------------------------------------------------------------------
// Direct-tcpip targets that name a device (`ssh -W kiosk-42:22`)

export type NamedTargetRefusal = 'DEVICE_UNKNOWN' | 'OTHER_DEVICE' | 'PORT_NOT_OWNED';

/**
 * Maps a direct-tcpip request naming DEVICE (as resolved from the name; undefined
 * if there is no such active device) onto 127.0.0.1:<port of its block>, for the
 * holder of IDENTITY. Only the operator's own device: the name is no way around
 * the principal, which authorizeDirectTcpip checks again on the mapped port.
 */
export function resolveNamedTarget(
  identity: Pick<OperatorIdentity, 'deviceId' | 'block'>,
  device: { readonly deviceId: string; readonly block: PortBlock } | undefined,
  destPort: number,
): { readonly allow: true; readonly destAddr: string; readonly destPort: number } | { readonly allow: false; readonly reason: NamedTargetRefusal } {
  if (!device) return { allow: false, reason: 'DEVICE_UNKNOWN' };
  if (device.deviceId !== identity.deviceId || device.block.first !== identity.block.first || device.block.last !== identity.block.last) {
    return { allow: false, reason: 'OTHER_DEVICE' };
  }
  const slot = SERVICE_PORT_SLOTS.get(destPort);
  const port = inBlock(destPort, device.block) ? destPort : slot !== undefined ? slotPort(device.block, slot) : undefined;
  if (port === undefined || !inBlock(port, device.block)) return { allow: false, reason: 'PORT_NOT_OWNED' };
  return { allow: true, destAddr: TUNNEL_HOST, destPort: port };
}
