/**
 * The console's two server-rendered pages: the sign-in form (the only place
 * the console takes a credential, on the broker's own origin) and the shell
 * the console's script fills in. Every interpolated value is escaped; the
 * policy allows the broker's own script, style and API and nothing else.
 */
import { escapeHtml, PAGE_HEADERS } from '../proxy/pages.js';

export const CONSOLE_PATH = '/console/';
export const CONSOLE_SIGN_IN_PATH = '/console/sign-in';
export const CONSOLE_ASSETS_PATH = '/console/assets/';

/** Strict: only the broker's own script, styles, images and API; no inline script or style; never framed. */
export const CONSOLE_CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
  "form-action 'self'", "base-uri 'none'", "frame-ancestors 'none'",
].join('; ');

/**
 * The broker pages' headers with this policy, and Referrer-Policy same-origin: under no-referrer Chromium sends
 * `Origin: null` with the page's own form posts, which the same-origin check (rightly) refuses.
 */
export const CONSOLE_PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({ ...PAGE_HEADERS, 'content-security-policy': CONSOLE_CSP, 'referrer-policy': 'same-origin' });

function layout(title: string, body: string, script: boolean): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="${CONSOLE_ASSETS_PATH}favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="${CONSOLE_ASSETS_PATH}console.css">
${script ? `<script type="module" src="${CONSOLE_ASSETS_PATH}console.js"></script>\n` : ''}</head>
<body>${body}</body></html>
`;
}

export interface SignInPageOptions {
  readonly error?: string;
  /** Where "Sign in with single sign-on" goes; absent: no such link (no oidc section in the config). */
  readonly ssoPath?: string;
}

export function consoleSignInPage(o: SignInPageOptions): string {
  const error = o.error ? `<p class="err" role="alert">${escapeHtml(o.error)}</p>` : '';
  const sso = o.ssoPath ? `<p class="sso"><a class="button" href="${escapeHtml(o.ssoPath)}">Sign in with single sign-on</a></p><p class="or">or</p>` : '';
  return layout('Sign in · certunnel console', `<main class="signin">
<h1>certunnel console</h1>
${error}${sso}<form method="post" action="${CONSOLE_SIGN_IN_PATH}">
<label for="apiKey">API key</label>
<input id="apiKey" name="apiKey" type="password" autocomplete="off" required autofocus spellcheck="false">
<button type="submit">Sign in</button>
</form>
<p class="hint">An API key of role admin, operator or provisioner (<code>certunnel apikey create</code>).</p>
</main>`, false);
}

/** The shell: navigation and an empty main, filled by console.js from the API. */
export function consoleShellPage(): string {
  return layout('certunnel console', `<header class="top"><a class="brand" href="#/">certunnel</a>
<nav id="nav" aria-label="Console pages"></nav>
<span id="who" class="who"></span>
<button id="sign-out" type="button" class="link">Sign out</button></header>
<div id="live" class="live" role="status" aria-live="polite"></div>
<main id="main" tabindex="-1"><p>Loading…</p></main>`, true);
}
