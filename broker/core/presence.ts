/**
 * The live view of a device's tunnel that the HTTP proxy and operator
 * certificates consult: which ports it forwards right now. The embedded
 * gateway has that view. In OpenSSH mode sshd holds the tunnels: the broker
 * knows whether a device is online (broker/openssh/presence.ts polls the
 * kernel's listening sockets every ssh.presencePollSeconds and records
 * online/offline in the store, for the device list, metrics and "offline
 * since"), but has no view per port, so those two get UNKNOWN_PRESENCE.
 */
import type { Duplex } from 'node:stream';

export interface TunnelPresence {
  /** Ports DEVICEID's tunnel forwards now ([] = offline), or undefined without a live view (OpenSSH mode). */
  forwardedPorts(deviceId: string): readonly number[] | undefined;
  /**
   * A stream into the tunnel, as a TCP connection to 127.0.0.1:PORT would
   * give, without the loopback hop (embedded gateway only; otherwise the
   * proxy connects to the port). Rejects with code ECONNREFUSED when the
   * tunnel does not hold the port.
   */
  dial?(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
}

/**
 * OpenSSH mode's view for the proxy and operator certificates: no ports
 * known, so nothing is refused as offline up front (the proxy finds out
 * when it connects to the port; the store's online flag is not consulted).
 */
export const UNKNOWN_PRESENCE: TunnelPresence = Object.freeze({ forwardedPorts: () => undefined });

/** When the device was last seen connected, for "offline since …"; null if it never connected. */
export function offlineSince(device: { lastSeenAt: Date | null; connectedSince: Date | null }): Date | null {
  return device.lastSeenAt ?? device.connectedSince ?? null;
}
