/**
 * The port pool must stay outside the kernel's ephemeral range: an outgoing
 * connection (the broker's own, or any process's) may hold a port from that
 * range at the moment a device wants it, and the device's forward is then
 * refused. Linux says its range in /proc/sys/net/ipv4/ip_local_port_range;
 * elsewhere nothing is checked.
 */
import { readFileSync } from 'node:fs';

export interface PortRange {
  readonly first: number;
  readonly last: number;
}

export const LINUX_EPHEMERAL_RANGE_FILE = '/proc/sys/net/ipv4/ip_local_port_range';

/** "32768\t60999" → the range; null if the text is not two ports. */
export function parseEphemeralRange(text: string): PortRange | null {
  const m = /^\s*(\d+)\s+(\d+)\s*$/.exec(text);
  if (!m) return null;
  const first = Number(m[1]);
  const last = Number(m[2]);
  return first >= 1 && first <= last && last <= 65535 ? { first, last } : null;
}

/** The kernel's ephemeral range, or null where it cannot be read. */
export function readEphemeralRange(file = LINUX_EPHEMERAL_RANGE_FILE): PortRange | null {
  try {
    return parseEphemeralRange(readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

/** A one-line warning when POOL overlaps EPHEMERAL, else null. */
export function ephemeralOverlapWarning(pool: PortRange, ephemeral: PortRange | null): string | null {
  if (!ephemeral || pool.last < ephemeral.first || pool.first > ephemeral.last) return null;
  const first = Math.max(pool.first, ephemeral.first);
  const last = Math.min(pool.last, ephemeral.last);
  return (
    `the port pool ${pool.first}-${pool.last} overlaps the kernel's ephemeral ports ${ephemeral.first}-${ephemeral.last} ` +
    `(${first}-${last}): outgoing connections may take a device's port and its forward is then refused; ` +
    `choose a pool below ${ephemeral.first}, or narrow net.ipv4.ip_local_port_range`
  );
}
