/**
 * The pages the broker answers on a device hostname instead of the device
 * (where to sign in, why a device cannot be reached), and the sign-in form
 * on the broker's own origin, the only place an operator types a
 * credential. Plain HTML, no scripts, every interpolated value escaped; the
 * stable error code travels in the X-Certunnel-Error header (and in the
 * page) for tools and tests.
 */
import type { ErrorCode } from '../core/errors.js';
import type { OfflineSince } from '../core/presence.js';
import { RESERVED_PREFIX } from '../../api/index.js';

export const LOGIN_PATH = `${RESERVED_PREFIX}login`;
export const LOGOUT_PATH = `${RESERVED_PREFIX}logout`;
/** On a device hostname: where the broker hands over a one-time sign-in code. */
export const CALLBACK_PATH = `${RESERVED_PREFIX}callback`;

export interface Page {
  readonly status: number;
  readonly code: ErrorCode | 'LOGGED_OUT';
  readonly html: string;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** Headers every broker page carries: never cached, never framed (nor framing-era browsers), no scripts, no opener. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': CSP,
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
});

/**
 * The sign-in page's policy: its form posts to the broker, whose answer
 * redirects to a device hostname, and browsers hold form-action to
 * redirects too, so DEVICEORIGINS (`https://*.<domain>:*`) are allowed there.
 */
export function signInPageHeaders(deviceOrigins: string): Record<string, string> {
  return { 'content-security-policy': CSP.replace("form-action 'self'", `form-action 'self' ${deviceOrigins}`) };
}

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

const SAME_ORIGIN = 'https://same-origin.invalid';

/**
 * A same-origin path to come back to after login; anything else becomes "/".
 * Parsed as a browser would (the WHATWG URL parser: "\\" is "/", dot
 * segments resolve) after refusing control characters, which browsers
 * strip ("/<TAB>/evil.example" is "//evil.example" to them); what is left
 * must stay on the origin it is resolved against, and is returned as the
 * parser serialised it, so the browser reads the very same path.
 */
export function safeNext(next: string | undefined): string {
  // eslint-disable-next-line no-control-regex -- control characters are what this refuses
  if (!next || !next.startsWith('/') || /[\u0000-\u001f\u007f]/.test(next)) return '/';
  let url: URL;
  try {
    url = new URL(next, SAME_ORIGIN);
  } catch {
    return '/';
  }
  const path = `${url.pathname}${url.search}${url.hash}`;
  if (url.origin !== SAME_ORIGIN || path.startsWith('//') || path.startsWith(RESERVED_PREFIX)) return '/';
  return path;
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

/** The device hostname's query for where to sign in: `?next=…`, always a path of this origin. */
export function nextQuery(next: string): string {
  return `?${new URLSearchParams({ next: safeNext(next) }).toString()}`;
}

/**
 * On a device hostname, for a request without a valid credential: where to
 * sign in (the device's LOGIN_PATH, which redirects to the broker's
 * origin). Never a form: what a device origin shows, the device can forge.
 */
export function loginPage(o: LoginPageOptions): Page {
  const next = safeNext(o.next);
  const paragraphs = [
    `Sign in to reach <strong>${escapeHtml(o.device)}</strong>: <a href="${escapeHtml(`${LOGIN_PATH}${nextQuery(next)}`)}">sign in on the broker</a>.`,
    ...(o.crossSite ? [`Already signed in? <a href="${escapeHtml(next)}">Continue to ${escapeHtml(o.device)}</a>.`] : []),
    ...(o.error ? [`<span class="err">${escapeHtml(o.error)}</span>`] : []),
    'Tools can send <code>Authorization: Bearer &lt;API key&gt;</code> instead. The device never sees either credential.',
    'Never type an API key into a page of a device hostname: the broker asks for it only on its own address.',
  ];
  return page(401, 'UNAUTHENTICATED', `Sign in to reach ${o.device}`, paragraphs);
}

export interface SignInPageOptions {
  readonly device: string;
  readonly next: string;
  readonly error?: string;
}

/** The broker origin's sign-in form (LOGIN_PATH there): the operator's API key, for DEVICE. */
export function signInPage(o: SignInPageOptions): Page {
  const paragraphs = [
    `Sign in with your operator API key to reach <strong>${escapeHtml(o.device)}</strong>.`,
    ...(o.error ? [`<span class="err">${escapeHtml(o.error)}</span>`] : []),
    `<form method="post" action="${LOGIN_PATH}">
<label>API key<br><input type="password" name="apiKey" autocomplete="current-password" required autofocus></label>
<input type="hidden" name="device" value="${escapeHtml(o.device)}">
<input type="hidden" name="next" value="${escapeHtml(safeNext(o.next))}">
<button type="submit">Sign in</button>
</form>`,
    'This page belongs to the broker; the device never sees your key.',
  ];
  return page(401, 'UNAUTHENTICATED', `Sign in to reach ${o.device}`, paragraphs);
}

function ago(since: Date, now: Date): string {
  const s = Math.max(0, Math.round((now.getTime() - since.getTime()) / 1000));
  if (s < 90) return `${s} seconds ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} minutes ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} hours ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** After "DEVICE is": offline since when, in HTML. */
function offlineText(offline: OfflineSince, now: Date): string {
  switch (offline.kind) {
    case 'since':
      return `offline since ${escapeHtml(offline.at.toISOString())} (${ago(offline.at, now)})`;
    case 'unrecorded': {
      const up = offline.connectedSince ? `, after being up since ${escapeHtml(offline.connectedSince.toISOString())} (${ago(offline.connectedSince, now)})` : '';
      return `offline: its tunnel went down moments ago${up}`;
    }
    case 'never':
      return 'offline: it has never connected';
  }
}

export interface RefusalPageOptions {
  readonly code: ErrorCode;
  readonly device: string;
  readonly message: string;
  readonly offlineSince?: OfflineSince;
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
      return page(502, o.code, `${o.device} is offline`, [`${d} is ${offlineText(o.offlineSince ?? { kind: 'never' }, o.now)}.`, 'Its tunnel to the broker is down; try again once it reconnects.']);
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

/** Logged out of DEVICE's hostname, or (without DEVICE) of the broker's origin. */
export function loggedOutPage(device?: string): Page {
  if (!device) return page(200, 'LOGGED_OUT', 'Logged out', ['You are signed out of the broker. Device hostnames you opened keep their own sessions until they log out or expire.']);
  return page(200, 'LOGGED_OUT', 'Logged out', [`You are logged out of ${escapeHtml(device)}. <a href="${LOGIN_PATH}">Log in again</a>.`]);
}
