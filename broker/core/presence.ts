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
  /**
   * Ports DEVICEID's tunnel forwards now ([] = offline), or undefined without a live view (OpenSSH mode; a
   * tunnel held by another node of a cluster). A promise when the answer needs the store (several nodes).
   */
  forwardedPorts(deviceId: string): readonly number[] | undefined | Promise<readonly number[] | undefined>;
  /**
   * A stream into the tunnel, as a TCP connection to 127.0.0.1:PORT would
   * give, without the loopback hop (embedded gateway only; otherwise the
   * proxy connects to the port). Rejects with code ECONNREFUSED when the
   * tunnel does not hold the port.
   */
  dial?(deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex>;
}

/** This node's own view (the embedded gateway's): always known at once. */
export interface LocalTunnelPresence extends TunnelPresence {
  forwardedPorts(deviceId: string): readonly number[] | undefined;
}

/**
 * OpenSSH mode's view for the proxy and operator certificates: no ports
 * known, so nothing is refused as offline up front (the proxy finds out
 * when it connects to the port; the store's online flag is not consulted).
 */
export const UNKNOWN_PRESENCE: TunnelPresence = Object.freeze({ forwardedPorts: () => undefined });

/**
 * What a refusal says about when a device went offline. The store learns of a disconnect late in OpenSSH mode
 * (presence polls every ssh.presencePollSeconds): a connection refused in that window meets a device the store
 * still calls online, whose lastSeenAt is when it came online, not when it left, so it is no "offline since".
 * - `since`: the store recorded the tunnel going down then (the device was last seen at AT);
 * - `unrecorded`: the store still says connected (since CONNECTEDSINCE): it went down moments ago;
 * - `never`: it has never connected.
 */
export type OfflineSince =
  | { readonly kind: 'since'; readonly at: Date }
  | { readonly kind: 'unrecorded'; readonly connectedSince: Date | null }
  | { readonly kind: 'never' };

/** For a device whose tunnel is down now (no live forward, or a refused connection): see OfflineSince. */
export function offlineSince(device: { online: boolean; lastSeenAt: Date | null; connectedSince: Date | null }): OfflineSince {
  if (device.online) return { kind: 'unrecorded', connectedSince: device.connectedSince ?? device.lastSeenAt };
  const at = device.lastSeenAt ?? device.connectedSince;
  return at ? { kind: 'since', at } : { kind: 'never' };
}

/** OFFLINE in words, after "is offline": " since 2026-…Z", " (its tunnel went down moments ago …)", " (it has never connected)". */
export function describeOffline(offline: OfflineSince): string {
  switch (offline.kind) {
    case 'since':
      return ` since ${offline.at.toISOString()}`;
    case 'unrecorded':
      return ` (its tunnel went down moments ago${offline.connectedSince ? `, after being up since ${offline.connectedSince.toISOString()}` : ''})`;
    case 'never':
      return ' (it has never connected)';
  }
}
