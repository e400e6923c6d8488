/**
 * Text a peer chose (a claimed key id, a direct-tcpip host name) is clipped
 * before it reaches a log line or an audit row, so that a hostile client
 * cannot fill either with one request.
 */
export function truncate(text: string, max = 128): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
