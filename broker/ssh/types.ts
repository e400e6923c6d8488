/**
 * The gateway's contract with the broker process that wires it in: what it
 * is given (injected dependencies, limits) and what it offers.
 */
import type { Duplex } from 'node:stream';
import type { KeyPair, PublicKey } from '../../ca/index.js';
import type { PortPool } from '../core/port-pool.js';
import type { LookupIssued } from './issued.js';
import type { SessionInfo } from './session.js';
import type { GatewayStats } from './stats.js';
import type { HostIdentity } from './host-identity.js';

/**
 * What the gateway's audit events record: a refusal (ssh.auth, ssh.forward,
 * ssh.channel, with the reason code in details), an operator's connection
 * to a device (ssh.reach) and a session the gateway ended (ssh.session.close).
 */
export type GatewayAuditOutcome = 'refused' | 'allowed' | 'closed';

export interface AuditEvent {
  readonly actor: string;
  readonly action: string;
  readonly target?: string;
  readonly remoteAddr?: string;
  readonly outcome: GatewayAuditOutcome;
  readonly details?: Record<string, unknown>;
}

/** An active device as resolveDevice reports it: its id and port block. */
export interface NamedDevice {
  readonly deviceId: string;
  readonly block: { readonly first: number; readonly last: number };
}

export interface PresenceUpdate {
  readonly deviceId: string;
  readonly online: boolean;
  readonly since?: Date;
  readonly remoteAddr?: string;
}

export interface GatewayLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface GatewayLimits {
  /** Connections that have not authenticated yet, all sources together: sshd MaxStartups' full. */
  readonly maxUnauthenticated?: number;
  /** Random early drop from this many unauthenticated connections on (MaxStartups' start; capped at maxUnauthenticated)… */
  readonly earlyDropStart?: number;
  /** …refusing a new one with this probability (percent) there, rising to 100% at maxUnauthenticated (MaxStartups' rate). */
  readonly earlyDropRate?: number;
  /** Unauthenticated connections from one IPv4 address / IPv6 /64 (sshd PerSourceMaxStartups). */
  readonly maxUnauthenticatedPerSource?: number;
  /** From TCP accept to successful authentication (sshd LoginGraceTime). */
  readonly authTimeoutMs?: number;
  /** Concurrent sessions of one device (all its certificates), or of one operator certificate (by serial). */
  readonly maxSessionsPerCertificate?: number;
  /** Refused attempts per connection before it is dropped (sshd MaxAuthTries). */
  readonly maxAuthAttempts?: number;
  /** Token bucket per IPv4 address / IPv6 /64: sustained new connections per second… */
  readonly perIpRatePerSecond?: number;
  /** …and how many may arrive at once. */
  readonly perIpBurst?: number;
  /** SSH keepalive (keepalive@openssh.com global request) period once authenticated. */
  readonly keepaliveIntervalMs?: number;
  /** Unanswered keepalives before the device is declared dead. */
  readonly keepaliveCountMax?: number;
}

/**
 * Defaults. The per-source burst is sized for a venue with a few hundred
 * devices behind one NAT that all reconnect after a broker restart: 100 at
 * once, then 10 a second (600 a minute) while their jittered backoff spreads
 * them out. A dead device is noticed after about 15 s x (3 + 1) = 60 s.
 *
 * Unauthenticated connections: a device authenticates within a few round
 * trips, so 32 at once per source is plenty for that venue (one that is
 * refused retries with its backoff), and a 15 s grace still covers a slow
 * cellular link. One address holds at most 32 slots of 512, and from 128
 * held in all, new ones are dropped at random (30% rising to 100% at 512):
 * a flood from many addresses slows devices down but cannot shut them out.
 * A device reconnecting replaces its old session (takeover), so a device
 * needs two sessions at most for a moment; 4 leaves room.
 */
export const DEFAULT_LIMITS: Required<GatewayLimits> = Object.freeze({
  maxUnauthenticated: 512,
  earlyDropStart: 128,
  earlyDropRate: 30,
  maxUnauthenticatedPerSource: 32,
  authTimeoutMs: 15_000,
  maxSessionsPerCertificate: 4,
  maxAuthAttempts: 6,
  perIpRatePerSecond: 10,
  perIpBurst: 100,
  keepaliveIntervalMs: 15_000,
  keepaliveCountMax: 3,
});

export interface GatewayDeps {
  /** The broker's Ed25519 host key. */
  readonly hostKey: KeyPair;
  /** Its host certificate line (signed by the host CA), presented beside it; absent: the key alone. */
  readonly hostCertificate?: string;
  /** Trusted user CA keys (device and operator certificates). */
  readonly userCaKeys: readonly PublicKey[];
  /**
   * The port pool: when given, only certificates whose principal names one
   * of its blocks exactly get in (OpenSSH mode's principals files list no
   * other). Without it the gateway trusts whatever block the CA signed.
   */
  readonly portPool?: PortPool;
  /** Synchronous, in memory; the control plane keeps it fresh. */
  isRevoked(cert: { serial: bigint; keyId: string }): boolean;
  /**
   * The store's record of a serial, consulted at login after every other
   * check passed (issued.ts: the certificate must be one the broker issued,
   * as presented, for an active device's current block); a lookup that
   * rejects refuses the login. Without it the gateway believes every
   * certificate the CA signed (tests, benchmarks).
   */
  lookupIssued?: LookupIssued;
  readonly clock: () => Date;
  /**
   * Looks up an active device by name, so that an operator may name the
   * device as the direct-tcpip target (`ssh -W kiosk-42:22`); without it
   * only 127.0.0.1 is a target.
   */
  resolveDevice?(name: string): Promise<NamedDevice | undefined>;
  /**
   * Several nodes (docs/cluster.md): an operator's connection to a port no
   * session here holds goes to DEVICEID's tunnel on the node that holds it,
   * over the node-to-node link; rejects with a code (DEVICE_OFFLINE, …).
   * Without it such a connection is refused (TUNNEL_NOT_CONNECTED).
   */
  remoteReach?(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
  /** Fire-and-forget. */
  audit(event: AuditEvent): void;
  presence?(update: PresenceUpdate): void;
  readonly logger: GatewayLogger;
  readonly limits?: GatewayLimits;
  /** [0, 1) for the random early drop; injected so that tests decide it. Default Math.random. */
  readonly random?: () => number;
}

export interface Gateway {
  /**
   * What new connections are shown from now on (host key, host certificate: a rotation); connections already
   * open keep theirs. Throws, changing nothing, if the certificate does not certify the key.
   */
  setHostIdentity(identity: HostIdentity): void;
  /** Starts accepting SSH connections; resolves with the bound port (useful with port 0). */
  listen(port: number, host: string): Promise<{ port: number }>;
  /** Stops accepting, ends every session, frees every port. */
  close(): Promise<void>;
  /** Ends every live session of DEVICEID and its listeners at once. */
  revokeDevice(deviceId: string): void;
  /**
   * DEVICEID connected to another broker node at STARTEDAT (takeover across
   * nodes): ends (reason TAKEOVER) its sessions here that began no later;
   * returns how many. A session that began after it is the newer one and stays.
   */
  takeOverDevice(deviceId: string, startedAt: Date): number;
  /**
   * Ends (reason REVOKED) every live device session whose certificate
   * ISREVOKED denies: the revoked serials of a rotated-away key, and the
   * periodic reconciliation against the store. Returns how many it ended.
   */
  endRevokedSessions(isRevoked: (cert: { serial: bigint; keyId: string }) => boolean): number;
  /** Ends every session (device or operator) whose certificate was signed by a CA not in ACCEPTED (a user CA rotation committed); returns how many. */
  endSessionsOfRetiredCas(accepted: readonly PublicKey[]): number;
  /** Ports DEVICEID's live sessions listen on right now, ascending ([] = offline). */
  tunnelPorts(deviceId: string): number[];
  /**
   * A stream to whatever DEVICEID forwards PORT to, as a connection to
   * 127.0.0.1:PORT would get, without the loopback hop (for the broker's own
   * HTTP proxy). Rejects when the device's tunnel does not hold PORT.
   */
  dialTunnel(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
  stats(): GatewayStats;
  sessions(): SessionInfo[];
}
