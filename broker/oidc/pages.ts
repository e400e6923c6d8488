/**
 * The pages a failed single sign-on ends on: what happened, what to do,
 * and the stable code (in the page and in X-Certunnel-Error). Plain HTML,
 * no scripts, the broker's page headers (no cache, no framing, strict
 * CSP). Text is fixed per code; the only thing from the request shown is
 * the provider's error code, and only when it is one the specifications
 * define (a made-up callback URL cannot write on the page).
 */
import type { ErrorCode } from '../core/errors.js';
import { ERROR_STATUS } from '../core/errors.js';
import { escapeHtml, PAGE_HEADERS } from '../proxy/pages.js';
import { OIDC_LOGIN_PATH } from '../core/oidc-config.js';

export type OidcRefusalCode = Extract<ErrorCode, `OIDC_${string}`> | 'BAD_REQUEST';

/** RFC 6749 section 4.1.2.1 and OpenID Connect Core section 3.1.2.6: the error codes a provider may answer an authorization request with. */
const PROVIDER_ERRORS: ReadonlySet<string> = new Set([
  'invalid_request', 'unauthorized_client', 'access_denied', 'unsupported_response_type', 'invalid_scope', 'server_error', 'temporarily_unavailable',
  'interaction_required', 'login_required', 'account_selection_required', 'consent_required', 'invalid_request_uri', 'invalid_request_object',
  'request_not_supported', 'request_uri_not_supported', 'registration_not_supported',
]);

/** The provider's error code as shown: a defined one, else "other". */
export function providerErrorName(error: string | null): string {
  return error !== null && PROVIDER_ERRORS.has(error) ? error : 'other';
}

const TEXT: Record<OidcRefusalCode, { title: string; body: string }> = {
  OIDC_NO_ROLE: {
    title: 'No access to this broker',
    body: 'Your identity provider signed you in, but none of your groups is given a role on this broker. Ask an administrator to add one of your groups to the broker\'s <code>oidc.roles</code>.',
  },
  OIDC_STATE_INVALID: {
    title: 'This sign-in cannot be completed',
    body: 'The answer from the identity provider does not belong to a sign-in this browser started, or it was already used. Nothing was changed.',
  },
  OIDC_STATE_EXPIRED: {
    title: 'This sign-in took too long',
    body: 'The sign-in was started too long ago. Nothing was changed.',
  },
  OIDC_PROVIDER_REFUSED: {
    title: 'The identity provider did not sign you in',
    body: 'The identity provider answered with an error. Nothing was changed.',
  },
  OIDC_TOKEN_INVALID: {
    title: 'The identity provider\'s answer was refused',
    body: 'The broker could not verify the identity provider\'s answer. Nothing was changed; the broker\'s log says more.',
  },
  OIDC_PROVIDER_UNAVAILABLE: {
    title: 'The identity provider cannot be reached',
    body: 'The broker could not talk to the identity provider. Try again in a moment; the broker\'s log says more.',
  },
  BAD_REQUEST: {
    title: 'Bad request',
    body: 'This address is for the identity provider\'s answer to a sign-in.',
  },
};

export interface OidcPage {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly html: string;
}

/** The refusal page for CODE; PROVIDERERROR names the provider's answer for OIDC_PROVIDER_REFUSED. */
export function oidcRefusalPage(code: OidcRefusalCode, providerError?: string): OidcPage {
  const { title, body } = TEXT[code];
  const extra = code === 'OIDC_PROVIDER_REFUSED' && providerError ? `<p>The provider said: <code>${escapeHtml(providerError)}</code>.</p>\n` : '';
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;color:#1d2330;background:#f4f5f7;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002;padding:2em 2.5em;max-width:32em}
h1{font-size:1.3em;margin:0 0 .6em}code{background:#eef0f3;padding:0 .3em;border-radius:3px}.code{color:#6b7280;font-size:.85em;margin-top:1.5em}
</style></head>
<body><main>
<h1>${escapeHtml(title)}</h1>
<p>${body}</p>
${extra}<p><a href="${OIDC_LOGIN_PATH}">Sign in again</a></p>
<p class="code">certunnel · ${code}</p>
</main></body></html>
`;
  return { status: ERROR_STATUS[code], headers: { ...PAGE_HEADERS, 'x-certunnel-error': code }, html };
}
