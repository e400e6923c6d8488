/** Address classes the broker's rules ask about (text as node and /proc print it). */

const LOOPBACK = /^(?:127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

/** 127.0.0.0/8, ::1, or IPv4-mapped 127.0.0.0/8. */
export function isLoopbackAddress(addr: string | undefined): boolean {
  return addr !== undefined && LOOPBACK.test(addr);
}
