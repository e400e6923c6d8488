/**
 * The broker as an OpenID Connect relying party, through openid-client
 * (v6, by the author of the certified node-oidc-provider; its core,
 * oauth4webapi, validates the ID token's signature against the provider's
 * JWKS, iss, aud, azp, exp, iat and nonce, and the state and PKCE
 * exchange). Nothing here validates a token by hand. Discovery happens on
 * first use and is retried until it succeeds, so a provider that is down
 * when the broker starts does not stop the broker.
 *
 * Every failure becomes one of three codes: OIDC_PROVIDER_UNAVAILABLE (no
 * answer, or not OpenID Connect), OIDC_TOKEN_INVALID (the exchange or the
 * ID token was refused), OIDC_PROVIDER_REFUSED (the provider's error
 * answer). Messages name what failed, never the secret or a token.
 */
import * as client from 'openid-client';
import { BrokerError } from '../core/errors.js';
import type { OidcConfig } from '../core/oidc-config.js';

export interface ProviderClientOptions {
  readonly config: OidcConfig;
  /** Absent only for tokenEndpointAuthMethod none. */
  readonly clientSecret: string | undefined;
  /** Asked when first needed: the broker may learn its public URL only once it listens. */
  readonly redirectUrl: () => string;
}

export interface AuthorizationRequest {
  readonly url: URL;
  readonly state: string;
  readonly nonce: string;
  readonly codeVerifier: string;
}

/** Fetch gave up: no connection, a reset, a timeout. */
function isTransportFailure(err: unknown): boolean {
  const e = err as { name?: string; message?: string; cause?: unknown };
  return e?.name === 'TimeoutError' || e?.name === 'AbortError' || (e instanceof TypeError && /fetch failed/.test(e.message ?? ''));
}

/** For the log: the library's code, the provider's OAuth error (in the body, or a WWW-Authenticate challenge) and the message; never a token or the secret. */
function describe(err: unknown): string {
  const e = err as { code?: string; error?: string; message?: string; cause?: unknown };
  const challenge = Array.isArray(e?.cause) ? (e.cause[0] as { parameters?: { error?: string } } | undefined)?.parameters?.error : undefined;
  return [e?.code, e?.error ?? challenge, e?.message].filter((s) => typeof s === 'string' && s !== '').join(': ').slice(0, 300) || 'unknown error';
}

function clientAuth(config: OidcConfig, secret: string | undefined): client.ClientAuth {
  if (config.tokenEndpointAuthMethod === 'none') return client.None();
  return config.tokenEndpointAuthMethod === 'client_secret_post' ? client.ClientSecretPost(secret) : client.ClientSecretBasic(secret);
}

export class ProviderClient {
  private discovered: Promise<client.Configuration> | undefined;

  constructor(private readonly o: ProviderClientOptions) {
    if (o.config.tokenEndpointAuthMethod !== 'none' && !o.clientSecret) throw new BrokerError('CONFIG_INVALID', 'oidc: the client secret is missing (oidc.clientSecretFile or CERTUNNEL_OIDC_CLIENT_SECRET)');
  }

  /** The provider's metadata and keys, discovered once (a failed discovery is tried again on the next call). */
  configuration(): Promise<client.Configuration> {
    this.discovered ??= this.discover().catch((err: unknown) => {
      this.discovered = undefined;
      throw err;
    });
    return this.discovered;
  }

  private async discover(): Promise<client.Configuration> {
    const { config } = this.o;
    try {
      return await client.discovery(new URL(config.issuer), config.clientId, { redirect_uris: [this.o.redirectUrl()], response_types: ['code'] }, clientAuth(config, this.o.clientSecret), {
        timeout: config.requestTimeoutSeconds,
        // Tests only (oidc.allowInsecureIssuer, refused for production-looking configs by the schema): http:// to the provider.
        execute: config.allowInsecureIssuer ? [client.allowInsecureRequests] : [],
      });
    } catch (err) {
      throw new BrokerError('OIDC_PROVIDER_UNAVAILABLE', `discovery of ${config.issuer} failed: ${describe(err)}`, { cause: err });
    }
  }

  /** Where to send the browser: authorization code flow with PKCE (S256), a fresh state and nonce. */
  async authorizationRequest(): Promise<AuthorizationRequest> {
    const configuration = await this.configuration();
    const codeVerifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = client.buildAuthorizationUrl(configuration, {
      redirect_uri: this.o.redirectUrl(),
      response_type: 'code',
      scope: this.o.config.scopes.join(' '),
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    });
    return { url, state, nonce, codeVerifier };
  }

  /**
   * Redeems the code in QUERY (the callback's query string, whose state the
   * caller has already matched) and returns the validated ID token's claims,
   * completed by userinfo when COMPLETE(claims) is false, i.e. the ID token
   * lacks the groups claim (providers that put groups only there).
   */
  async exchange(query: URLSearchParams, checks: { state: string; nonce: string; codeVerifier: string }, complete: (claims: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    const configuration = await this.configuration();
    // The redirect_uri sent to the token endpoint is the configured one, never one built from the request's Host.
    const current = new URL(this.o.redirectUrl());
    current.search = query.toString();
    let tokens: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      tokens = await client.authorizationCodeGrant(configuration, current, {
        pkceCodeVerifier: checks.codeVerifier, expectedState: checks.state, expectedNonce: checks.nonce, idTokenExpected: true,
      });
    } catch (err) {
      if (isTransportFailure(err)) throw new BrokerError('OIDC_PROVIDER_UNAVAILABLE', `token request failed: ${describe(err)}`, { cause: err });
      if (err instanceof client.AuthorizationResponseError) throw new BrokerError('OIDC_PROVIDER_REFUSED', `the provider answered ${err.error}`, { cause: err });
      throw new BrokerError('OIDC_TOKEN_INVALID', `the token answer was refused: ${describe(err)}`, { cause: err });
    }
    const claims: Record<string, unknown> = { ...tokens.claims()! };
    if (complete(claims) || !tokens.access_token || !configuration.serverMetadata().userinfo_endpoint) return claims;
    try {
      const info = await client.fetchUserInfo(configuration, tokens.access_token, String(claims.sub));
      // The ID token's claims win: userinfo only adds what it lacks.
      return { ...info, ...claims };
    } catch (err) {
      if (isTransportFailure(err)) throw new BrokerError('OIDC_PROVIDER_UNAVAILABLE', `userinfo request failed: ${describe(err)}`, { cause: err });
      throw new BrokerError('OIDC_TOKEN_INVALID', `the userinfo answer was refused: ${describe(err)}`, { cause: err });
    }
  }

  /**
   * RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): the
   * provider's end_session_endpoint with client_id, post_logout_redirect_uri
   * and, when the caller kept it, id_token_hint; undefined when the provider
   * advertises no such endpoint.
   */
  async endSessionUrl(postLogoutRedirectUrl: string, idTokenHint?: string): Promise<URL | undefined> {
    const configuration = await this.configuration();
    if (!configuration.serverMetadata().end_session_endpoint) return undefined;
    const params: Record<string, string> = { post_logout_redirect_uri: postLogoutRedirectUrl };
    if (idTokenHint) params.id_token_hint = idTokenHint;
    return client.buildEndSessionUrl(configuration, params);
  }
}
