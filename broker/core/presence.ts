/**
 * What the broker can tell about a device's live tunnel. The embedded
 * gateway knows which ports each device forwards right now; in OpenSSH mode
 * sshd holds the tunnels and the broker cannot see them.
 */
import type { Duplex } from 'node:stream';

export interface TunnelPresence {
  /** Ports DEVICEID's tunnel forwards now ([] = offline), or undefined when the broker cannot know. */
  forwardedPorts(deviceId: string): readonly number[] | undefined;
  /**
   * A stream into the tunnel, as a TCP connection to 127.0.0.1:PORT would
   * give, without the loopback hop (embedded gateway only; otherwise the
   * proxy connects to the port). Rejects with code ECONNREFUSED when the
   * tunnel does not hold the port.
   */
  dial?(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
}

/** OpenSSH mode: presence is unknown, so nothing is refused as offline up front. */
export const UNKNOWN_PRESENCE: TunnelPresence = Object.freeze({ forwardedPorts: () => undefined });

/** When the device was last seen connected, for "offline since …"; null if it never connected. */
export function offlineSince(device: { lastSeenAt: Date | null; connectedSince: Date | null }): Date | null {
  return device.lastSeenAt ?? device.connectedSince ?? null;
}
