/**
 * Address rules the broker asks about (text as node and /proc print it):
 * loopback, and who the client of a request is.
 */

const LOOPBACK = /^(?:127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

/** 127.0.0.0/8, ::1, or IPv4-mapped 127.0.0.0/8. */
export function isLoopbackAddress(addr: string | undefined): boolean {
  return addr !== undefined && LOOPBACK.test(addr);
}

/** A listen address meaning every interface (0.0.0.0, ::): not an address anyone can dial. */
export function isWildcardAddress(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/**
 * The client address to audit and rate-limit, for the API, the HTTP proxy
 * and nginx's auth_request alike: the TCP peer's, unless the caller trusts
 * the peer as a proxy (TRUSTED); then the last X-Forwarded-For entry, the
 * one that proxy appended (what a client wrote before it is not believed).
 * Several X-Forwarded-For headers count as one list, in order.
 */
export function clientAddressFrom(peer: string | undefined, forwardedFor: string | readonly string[] | undefined, trusted: boolean): string | null {
  const header = typeof forwardedFor === 'string' ? forwardedFor : forwardedFor?.join(',');
  if (trusted && header) {
    const last = header.slice(header.lastIndexOf(',') + 1).trim();
    if (last) return last;
  }
  return peer ?? null;
}
