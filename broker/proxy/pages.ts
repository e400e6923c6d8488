/**
 * The pages the broker answers on a device hostname instead of the device:
 * login, and why a device cannot be reached. Plain HTML, no scripts, every
 * interpolated value escaped; the stable error code travels in the
 * X-Certunnel-Error header (and in the page) for tools and tests.
 */
import type { ErrorCode } from '../core/errors.js';
import { RESERVED_PREFIX } from '../../api/index.js';

export const LOGIN_PATH = `${RESERVED_PREFIX}login`;
export const LOGOUT_PATH = `${RESERVED_PREFIX}logout`;

export interface Page {
  readonly status: number;
  readonly code: ErrorCode | 'LOGGED_OUT';
  readonly html: string;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Headers every broker page carries: never cached, never framed, no scripts. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
});

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;color:#1d2330;background:#f4f5f7;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002;padding:2em 2.5em;max-width:32em}
h1{font-size:1.3em;margin:0 0 .6em}code{background:#eef0f3;padding:0 .3em;border-radius:3px}
.code{color:#6b7280;font-size:.85em;margin-top:1.5em}input[type=password]{width:100%;box-sizing:border-box;padding:.5em;font:inherit}
button{margin-top:1em;padding:.5em 1.2em;font:inherit;cursor:pointer}.err{color:#b42318}
</style></head>
<body><main>
${body}
</main></body></html>
`;
}

function page(status: number, code: Page['code'], title: string, paragraphs: readonly string[]): Page {
  const body = `<h1>${escapeHtml(title)}</h1>\n${paragraphs.map((p) => `<p>${p}</p>`).join('\n')}\n<p class="code">certunnel · ${code}</p>`;
  return { status, code, html: layout(title, body) };
}

/** A same-origin path to come back to after login; anything else (//evil, https://…) becomes "/". */
export function safeNext(next: string | undefined): string {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\') || /[\r\n]/.test(next)) return '/';
  return next.startsWith(RESERVED_PREFIX) ? '/' : next;
}

export interface LoginPageOptions {
  readonly device: string;
  readonly next: string;
  readonly error?: string;
  /**
   * The browser came from another site: SameSite=Strict held a session
   * cookie back, if there is one; a click on this link sends it.
   */
  readonly crossSite?: boolean;
}

export function loginPage(o: LoginPageOptions): Page {
  const next = safeNext(o.next);
  const paragraphs = [
    `Log in with your operator API key to reach <strong>${escapeHtml(o.device)}</strong>.`,
    ...(o.crossSite ? [`Already logged in? <a href="${escapeHtml(next)}">Continue to ${escapeHtml(o.device)}</a>.`] : []),
    ...(o.error ? [`<span class="err">${escapeHtml(o.error)}</span>`] : []),
    `<form method="post" action="${LOGIN_PATH}">
<label>API key<br><input type="password" name="apiKey" autocomplete="current-password" required autofocus></label>
<input type="hidden" name="next" value="${escapeHtml(next)}">
<button type="submit">Log in</button>
</form>`,
    'Tools can send <code>Authorization: Bearer &lt;API key&gt;</code> instead. The device never sees either credential.',
  ];
  return page(401, 'UNAUTHENTICATED', `Log in to reach ${o.device}`, paragraphs);
}

function ago(since: Date, now: Date): string {
  const s = Math.max(0, Math.round((now.getTime() - since.getTime()) / 1000));
  if (s < 90) return `${s} seconds ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} minutes ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} hours ago`;
  return `${Math.round(s / 86400)} days ago`;
}

export interface RefusalPageOptions {
  readonly code: ErrorCode;
  readonly device: string;
  readonly message: string;
  readonly offlineSince?: Date | null;
  readonly revokedAt?: Date | null;
  readonly retryAfterSeconds?: number;
  readonly now: Date;
}

/** The page for a refusal code; unexpected codes get a generic page with the code's status. */
export function refusalPage(o: RefusalPageOptions, status: number): Page {
  const d = `<strong>${escapeHtml(o.device)}</strong>`;
  switch (o.code) {
    case 'DEVICE_UNKNOWN':
      return page(404, o.code, 'No such device', [`There is no device named ${d}.`, 'Check the name with <code>certunnel device list</code>.']);
    case 'DEVICE_REVOKED':
      return page(403, o.code, `${o.device} has been revoked`, [
        `${d} was revoked${o.revokedAt ? ` on ${escapeHtml(o.revokedAt.toISOString())}` : ''}; it can no longer be reached.`,
      ]);
    case 'DEVICE_OFFLINE': {
      const since = o.offlineSince
        ? `offline since ${escapeHtml(o.offlineSince.toISOString())} (${ago(o.offlineSince, o.now)})`
        : 'offline: it has never connected';
      return page(502, o.code, `${o.device} is offline`, [`${d} is ${since}.`, 'Its tunnel to the broker is down; try again once it reconnects.']);
    }
    case 'DEVICE_SERVICE_UNAVAILABLE':
      return page(502, o.code, `${o.device} is not answering`, [`${escapeHtml(o.message)}.`, `The tunnel to ${d} is up, but its web service did not answer.`]);
    case 'RATE_LIMITED':
      return page(429, o.code, 'Too many failed attempts', [
        'Too many API keys that were not accepted came from your address.',
        `Try again in ${o.retryAfterSeconds ?? 60} seconds.`,
      ]);
    case 'FORBIDDEN':
      return page(403, o.code, 'Not allowed', ['This API key may not reach devices (it needs the admin or operator role).', `<a href="${LOGOUT_PATH}">Log out</a>`]);
    default:
      return page(status, o.code, 'Request refused', [escapeHtml(o.message)]);
  }
}

export function loggedOutPage(device: string): Page {
  return page(200, 'LOGGED_OUT', 'Logged out', [`You are logged out of ${escapeHtml(device)}. <a href="${LOGIN_PATH}">Log in again</a>.`]);
}
