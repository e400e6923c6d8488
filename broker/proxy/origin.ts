/**
 * Origins, as browsers name them (RFC 6454: scheme, host, port), for the
 * proxy's two browser rules. Pure: headers in, a verdict out.
 *
 * - Cross-device CSRF: every `<x>.<domain>` hostname is one *site*, so
 *   SameSite=Strict still sends device B's session with a form that device
 *   A's page posts to B. An unsafe method, or any WebSocket upgrade (a
 *   state-changing channel that the same-origin policy does not guard:
 *   CSWSH), must come from the hostname's own origin: its `Origin` header
 *   when there is one, else its `Sec-Fetch-Site` (same-origin, or none: the
 *   user's own navigation). A request with neither header is not a
 *   browser's (a tool with a bearer key) and goes on.
 * - Where the browser is sent: the broker's origin for signing in, and a
 *   device hostname's origin for its sign-in code.
 */
import type { IncomingHttpHeaders } from 'node:http';

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The scheme the client used: a trusted proxy's X-Forwarded-Proto (its
 * first hop), else whether the connection to the broker is TLS.
 */
export function schemeOf(headers: IncomingHttpHeaders, encrypted: boolean, behindProxy: boolean): 'http' | 'https' {
  const forwarded = behindProxy ? first(headers['x-forwarded-proto'])?.split(',')[0]?.trim().toLowerCase() : undefined;
  if (forwarded === 'http' || forwarded === 'https') return forwarded;
  return encrypted ? 'https' : 'http';
}

/** The origin the client addressed (SCHEME and its Host header), or undefined when Host is not a bare host[:port]. */
export function requestOrigin(scheme: 'http' | 'https', hostHeader: string | undefined): URL | undefined {
  if (!hostHeader) return undefined;
  let url: URL;
  try {
    url = new URL(`${scheme}://${hostHeader}`);
  } catch {
    return undefined;
  }
  const bare = url.pathname === '/' && !url.username && !url.password && !url.search && !url.hash && !/[/?#@\\]/.test(hostHeader);
  return bare ? url : undefined;
}

/** ORIGIN with its hostname replaced by HOSTNAME (scheme and port kept): a sibling on the same listener. */
export function withHostname(origin: URL, hostname: string): string {
  const url = new URL(origin.href);
  url.hostname = hostname;
  return url.origin;
}

export interface OriginCheck {
  readonly method: string | undefined;
  readonly headers: IncomingHttpHeaders;
  /** The origin this request addressed (requestOrigin), undefined if its Host is unusable. */
  readonly own: URL | undefined;
  /** A WebSocket (any Upgrade) request: checked whatever its method. */
  readonly upgrade: boolean;
}

/** Why a browser request may not act on this origin (CROSS_ORIGIN_REFUSED), or undefined when it may. */
export function crossOriginRefusal(c: OriginCheck): string | undefined {
  if (!c.upgrade && SAFE_METHODS.has((c.method ?? 'GET').toUpperCase())) return undefined;
  const origin = first(c.headers.origin);
  if (origin !== undefined) {
    let given: string;
    try {
      given = new URL(origin).origin;
    } catch {
      return 'the Origin header is not a URL';
    }
    // An opaque origin ("null": sandboxed frames, some redirects) is nobody's own.
    return c.own && given !== 'null' && given === c.own.origin ? undefined : `a page of ${given} may not act on ${c.own?.origin ?? 'this host'}`;
  }
  const site = first(c.headers['sec-fetch-site']);
  if (site === undefined || site === 'same-origin' || site === 'none') return undefined;
  return `a ${site} request may not act on this device`;
}
