/**
 * What the supervisor asks of a transport (the "dialer"): open one SSH
 * connection with the device certificate, verify the broker's host key,
 * request every remote forward, and report how the tunnel ended. Two
 * implementations: transport-ssh2.ts (in process) and transport-openssh.ts
 * (the system ssh client, supervised); tests inject fakes.
 */
import type { KeyPair, PublicKey } from '../ca/index.js';

export interface ForwardSpec {
  /** The service name from the config (ssh, http, …), for logs. */
  readonly name: string;
  /** The broker-side port: 127.0.0.1:<remotePort> on the broker. */
  readonly remotePort: number;
  /** Where the device's service listens. */
  readonly localHost: string;
  readonly localPort: number;
}

export interface TunnelSpec {
  readonly host: string;
  readonly port: number;
  readonly username: string;
  /** Local address to dial from (ssh -b). */
  readonly bindAddress?: string;
  readonly key: KeyPair;
  readonly keyPath: string;
  readonly certificateLine: string;
  readonly certificatePath: string;
  /** The pinned host key (ssh2 transport). */
  readonly hostKey: PublicKey;
  /** Every host key of the broker's trust set (ssh2 transport), hostKey among them; absent: hostKey alone. */
  readonly acceptedHostKeys?: readonly PublicKey[];
  /** Pinned key and host CA, for ssh -o UserKnownHostsFile. */
  readonly knownHostsPath: string;
  readonly forwards: readonly ForwardSpec[];
  readonly keepaliveIntervalMs: number;
  readonly keepaliveCountMax: number;
  readonly connectTimeoutMs: number;
  /** Where the openssh transport records its child's pid (to end a stale one after a crash). */
  readonly pidFile?: string;
}

/**
 * Failure codes, the same for both transports:
 * - HOST_KEY_MISMATCH: the server presents no host key (or host certificate) the agent trusts
 *   (never authenticated, nothing sent): a spoof, or a host-key rotation the device slept through;
 * - AUTH_REFUSED: the server refused the certificate (expired, revoked, unknown CA…);
 * - FORWARD_REFUSED: a remote forward was refused (port held by a stale session, not permitted);
 * - UNREACHABLE: no TCP connection, or it was cut before the SSH handshake;
 * - TIMEOUT: no handshake / no forward reply in time;
 * - KEEPALIVE_TIMEOUT: a connected tunnel stopped answering keepalives;
 * - DISCONNECTED: a connected tunnel was closed by the server or the network;
 * - CLOSED: closed by the agent itself;
 * - SPAWN_FAILED: the ssh client could not be started (openssh transport);
 * - PROTOCOL: anything else the SSH layer reported.
 */
export type TransportErrorCode =
  | 'HOST_KEY_MISMATCH'
  | 'AUTH_REFUSED'
  | 'FORWARD_REFUSED'
  | 'UNREACHABLE'
  | 'TIMEOUT'
  | 'KEEPALIVE_TIMEOUT'
  | 'DISCONNECTED'
  | 'CLOSED'
  | 'SPAWN_FAILED'
  | 'PROTOCOL';

export class TransportError extends Error {
  override name = 'TransportError';
  constructor(
    readonly code: TransportErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface TunnelEnd {
  readonly code: TransportErrorCode;
  readonly message: string;
}

export interface Tunnel {
  /** Resolves once, when the tunnel is gone for whatever reason; never rejects. */
  readonly closed: Promise<TunnelEnd>;
  /** Closes the tunnel and resolves once it is gone (idempotent). */
  close(): Promise<void>;
}

export interface Transport {
  readonly name: 'ssh2' | 'openssh' | string;
  /**
   * Resolves once every forward is listening on the broker; rejects with a
   * TransportError (CLOSED when SIGNAL aborts the attempt).
   */
  open(spec: TunnelSpec, signal?: AbortSignal): Promise<Tunnel>;
}
