/**
 * How the HTTP proxy answers when it does not relay: a broker page, on a
 * response (sendPage) or, for an upgrade request, straight on the socket
 * (sendRawPage); the page for a refusal by the authorizer; and the page for
 * an unexpected failure, whose details stay in the log.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { BrokerError, ERROR_STATUS, type ErrorCode } from '../core/errors.js';
import { loginPage, PAGE_HEADERS, refusalPage, type Page } from './pages.js';
import type { ProxyDecision } from './proxy-auth.js';
import type { ProxyContext } from './proxy-context.js';
import { SESSION_COOKIE } from './session-cookie.js';

export type Refusal = Extract<ProxyDecision, { allow: false }>;

/** PAGE as the response (STATUS, default the page's); a response already under way is cut instead. */
export function sendPage(res: ServerResponse, page: Page, extra: Record<string, string> = {}, status = page.status): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = Buffer.from(page.html);
  const errorHeader: Record<string, string> = page.code === 'LOGGED_OUT' ? {} : { 'x-certunnel-error': page.code };
  res.writeHead(status, { ...PAGE_HEADERS, ...errorHeader, ...extra, 'content-length': String(body.length) });
  res.end(body);
}

/** PAGE written as a whole HTTP/1.1 response on SOCKET (an upgrade request has no ServerResponse), then closed. */
export function sendRawPage(socket: Duplex, page: Page, extra: Record<string, string> = {}): void {
  const body = Buffer.from(page.html);
  const headers = Object.entries({ ...PAGE_HEADERS, 'x-certunnel-error': page.code, ...extra, 'content-length': String(body.length), connection: 'close' }).flat();
  socket.end(Buffer.concat([Buffer.from(rawResponseHead(page.status, STATUS_CODES[page.status] ?? 'Refused', headers)), body]));
  // Whatever the client still sends is read and dropped, never relayed: a paused socket would not see its close.
  socket.resume();
}

/** An HTTP/1.1 response head as text, from a raw [name, value, …] list its caller has checked (responseHeadProblem). */
export function rawResponseHead(status: number, message: string, headers: readonly string[]): string {
  let head = `HTTP/1.1 ${status} ${message}\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}

/** The page for DECISION: the login form when unauthenticated (with a hint when a credential was refused), else why not. */
export function refusalAnswer(decision: Refusal, deviceName: string, req: IncomingMessage, now: Date): { page: Page; extra: Record<string, string> } {
  if (decision.code === 'UNAUTHENTICATED') {
    const page = loginPage({ device: deviceName, next: req.url ?? '/', crossSite: req.headers['sec-fetch-site'] === 'cross-site', error: req.headers.cookie?.includes(`${SESSION_COOKIE}=`) || req.headers.authorization ? decision.message : undefined });
    return { page, extra: { 'www-authenticate': 'Bearer realm="certunnel"' } };
  }
  const page = refusalPage({
    code: decision.code, device: deviceName, message: decision.message, offlineSince: decision.offlineSince,
    revokedAt: decision.device?.revokedAt ?? null, retryAfterSeconds: decision.retryAfterSeconds, now,
  }, ERROR_STATUS[decision.code]);
  return { page, extra: decision.retryAfterSeconds ? { 'retry-after': String(decision.retryAfterSeconds) } : {} };
}

/** An unexpected failure: logged and counted; the client sees its code, and its message only below 500. */
export function sendFailure(ctx: ProxyContext, res: ServerResponse, err: unknown): void {
  ctx.logger.error({ err }, 'proxy: request failed');
  const code: ErrorCode = err instanceof BrokerError ? err.code : 'INTERNAL';
  ctx.count(code);
  sendPage(res, refusalPage({ code, device: '', message: err instanceof BrokerError && err.status < 500 ? err.message : 'internal error', now: ctx.clock() }, ERROR_STATUS[code]));
}
