/**
 * What the broker can tell about a device's live tunnel. The embedded
 * gateway knows which ports each device forwards right now; in OpenSSH mode
 * sshd holds the tunnels and the broker cannot see them.
 */
export interface TunnelPresence {
  /** Ports DEVICEID's tunnel forwards now ([] = offline), or undefined when the broker cannot know. */
  forwardedPorts(deviceId: string): readonly number[] | undefined;
}

/** OpenSSH mode: presence is unknown, so nothing is refused as offline up front. */
export const UNKNOWN_PRESENCE: TunnelPresence = Object.freeze({ forwardedPorts: () => undefined });

/** When the device was last seen connected, for "offline since …"; null if it never connected. */
export function offlineSince(device: { lastSeenAt: Date | null; connectedSince: Date | null }): Date | null {
  return device.lastSeenAt ?? device.connectedSince ?? null;
}
