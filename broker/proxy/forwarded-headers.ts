/**
 * The headers the HTTP proxy relays, both ways. Pure: raw header lists in,
 * raw header lists out (order and case kept).
 *
 * To the device: method, path, the headers minus hop-by-hop ones (RFC 9110
 * section 7.6.1) and minus the broker's credentials (bearer API key,
 * session cookie), plus X-Forwarded-For/-Proto/-Host. Behind a proxy the
 * broker trusts (api.trustProxy) the incoming X-Forwarded-* are the
 * proxy's and are extended; otherwise they are the client's and are
 * replaced. The Host header stays the device hostname.
 *
 * To the client: the device's headers minus hop-by-hop ones, and never a
 * Set-Cookie for the broker's session cookie; and only a response head that
 * node's http server accepts (responseHeadProblem), for node's writeHead
 * throws on anything else.
 */
import { validateHeaderName, validateHeaderValue, type IncomingMessage } from 'node:http';
import type { ForwardedCredentials } from './proxy-auth.js';
import { SESSION_COOKIE, setsCookie } from './session-cookie.js';

/** RFC 9110 section 7.6.1 and friends: meaningful for one connection only. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);
/** Set by the broker (or by the proxy in front of it); a client's own values are not believed. */
const FORWARDING = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded', 'x-real-ip']);

const NO_TOKENS: ReadonlySet<string> = new Set();
const KEEP_ALIVE: ReadonlySet<string> = new Set(['keep-alive']);

function connectionTokens(value: string | string[] | undefined): ReadonlySet<string> {
  // The usual values, without building a set per message.
  if (value === undefined || value === 'keep-alive' || value === 'close') return value === 'keep-alive' ? KEEP_ALIVE : NO_TOKENS;
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  return new Set(text.split(',').map((t) => t.trim().toLowerCase()).filter(Boolean));
}

/** Request headers for the device, as a raw [name, value, …] list (order and case kept). */
export function upstreamHeaders(
  req: Pick<IncomingMessage, 'rawHeaders' | 'headers'>,
  forward: ForwardedCredentials,
  ctx: { remoteAddr: string; encrypted: boolean; behindProxy: boolean; upgrade: boolean },
): string[] {
  const dropped = connectionTokens(req.headers.connection);
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || dropped.has(lower) || lower === 'authorization' || lower === 'cookie' || lower === 'expect') continue;
    if (FORWARDING.has(lower) && (!ctx.behindProxy || lower.startsWith('x-forwarded-'))) continue;
    out.push(name, raw[i + 1]!);
  }
  if (forward.authorization) out.push('Authorization', forward.authorization);
  if (forward.cookie) out.push('Cookie', forward.cookie);
  const prior = (name: string): string | undefined => {
    const v = req.headers[name];
    return Array.isArray(v) ? v.join(', ') : v;
  };
  const host = req.headers.host ?? '';
  const xff = ctx.behindProxy && prior('x-forwarded-for') ? `${prior('x-forwarded-for')}, ${ctx.remoteAddr}` : ctx.remoteAddr;
  const proto = (ctx.behindProxy ? prior('x-forwarded-proto') : undefined) ?? (ctx.encrypted ? 'https' : 'http');
  const xfh = ctx.behindProxy ? (prior('x-forwarded-host') ?? host) : host;
  out.push('X-Forwarded-For', xff, 'X-Forwarded-Proto', proto, 'X-Forwarded-Host', xfh);
  if (ctx.upgrade) out.push('Connection', 'Upgrade', 'Upgrade', String(req.headers.upgrade ?? ''));
  return out;
}

/** Response headers for the client: hop-by-hop ones dropped, and no device may set the broker's session cookie. */
export function downstreamHeaders(raw: readonly string[], connection: string | string[] | undefined): string[] {
  const dropped = connectionTokens(connection);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || dropped.has(lower)) continue;
    if (lower === 'set-cookie' && setsCookie(raw[i + 1]!, SESSION_COOKIE)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/**
 * Why the device's response head cannot be relayed, or null if it can.
 * node's response parser lets through a status of 0-99 and control
 * characters in the reason phrase, which writeHead then throws on
 * (measured, node 20); header names and values are checked by node's own
 * validators (the rules writeHead applies), in case a parser lets more
 * through. A 1xx is never a final response, and 101 only answers an
 * Upgrade request (UPGRADE).
 */
export function responseHeadProblem(status: number | undefined, message: string | undefined, raw: readonly string[], upgrade = false): string | null {
  if (status === undefined || !Number.isInteger(status) || status > 999 || (status < 200 && !(upgrade && status === 101))) return `status ${String(status)}`;
  try {
    // The reason phrase (RFC 9112 section 4) obeys the rule of a header value: HTAB, SP, VCHAR, obs-text.
    if (message) validateHeaderValue('reason-phrase', message);
  } catch {
    return 'control character in the reason phrase';
  }
  try {
    for (let i = 0; i < raw.length; i += 2) {
      validateHeaderName(raw[i]!);
      validateHeaderValue(raw[i]!, raw[i + 1]!);
    }
  } catch {
    return 'invalid header name or value';
  }
  return null;
}
