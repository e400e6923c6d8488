/**
 * A real OpenID Connect provider for tests: node-oidc-provider (the
 * certified implementation by openid-client's author) on 127.0.0.1 at an
 * ephemeral port, with an in-memory account store whose users carry a
 * `groups` claim, its development login and consent pages
 * (devInteractions: any password, the login names the account), PKCE
 * required, and RP-initiated logout. The console's browser tests reuse it:
 * drive it with TestBrowser (testkit/test-browser.ts) or a real Chromium.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider from 'oidc-provider';

export interface TestIdpAccount {
  /** What is typed into the provider's login form; also the subject (`sub`). */
  readonly login: string;
  readonly email?: string;
  readonly name?: string;
  /** The `groups` claim: a list, or a single string as some providers send. */
  readonly groups?: readonly string[] | string;
}

export interface TestIdpClient {
  readonly clientId: string;
  /** Absent: a public client (token_endpoint_auth_method none). */
  readonly clientSecret?: string;
  readonly redirectUris: readonly string[];
  readonly postLogoutRedirectUris?: readonly string[];
  readonly tokenEndpointAuthMethod?: 'client_secret_basic' | 'client_secret_post' | 'none';
}

export interface TestIdpOptions {
  readonly accounts: readonly TestIdpAccount[];
  readonly clients: readonly TestIdpClient[];
  /** Where the groups claim is: in the ID token itself, or only at the userinfo endpoint (the provider's default). */
  readonly claimsIn?: 'id_token' | 'userinfo';
  /** Advertise end_session_endpoint (RP-initiated logout); default true. */
  readonly endSession?: boolean;
}

export interface TestIdp {
  /** http://127.0.0.1:<port> */
  readonly issuer: string;
  readonly provider: Provider;
  /** `METHOD /path` of every request the provider received, in order (which endpoints the relying party used). */
  readonly requests: readonly string[];
  /** The userinfo endpoint's path. */
  readonly userinfoPath: string;
  close(): Promise<void>;
}

/** Starts the provider; close() it in finally. */
export async function startTestIdp(o: TestIdpOptions): Promise<TestIdp> {
  const server: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const accounts = new Map(o.accounts.map((a) => [a.login, a]));
  const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const provider = new Provider(issuer, {
    clients: o.clients.map((c) => ({
      client_id: c.clientId,
      ...(c.clientSecret ? { client_secret: c.clientSecret } : {}),
      redirect_uris: [...c.redirectUris],
      post_logout_redirect_uris: [...(c.postLogoutRedirectUris ?? [])],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: c.tokenEndpointAuthMethod ?? (c.clientSecret ? 'client_secret_basic' : 'none'),
    })),
    async findAccount(_ctx, id) {
      const account = accounts.get(id);
      if (!account) return undefined;
      return {
        accountId: id,
        claims: () => ({
          sub: id,
          ...(account.email ? { email: account.email, email_verified: true } : {}),
          ...(account.name ? { name: account.name } : {}),
          ...(account.groups !== undefined ? { groups: account.groups } : {}),
        }),
      };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    // false: the ID token carries every claim its scopes grant (as Keycloak, Entra do with groups); true: only userinfo does.
    conformIdTokenClaims: o.claimsIn !== 'id_token',
    features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: o.endSession ?? true } },
    pkce: { required: () => true },
    jwks: { keys: [{ ...signingKey, use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') }] as never },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // Fixed lifetimes (seconds); the authorization code lives 60 s, single use.
    ttl: { AuthorizationCode: 60, AccessToken: 600, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
    // Errors end on the provider's own error page; the tests read the page, not a log.
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><pre id="error">${String(out.error)}</pre>`;
    },
  });
  const requests: string[] = [];
  const callback = provider.callback();
  server.on('request', (req, res) => {
    requests.push(`${req.method} ${new URL(req.url ?? '/', issuer).pathname}`);
    callback(req, res);
  });
  return {
    issuer,
    provider,
    requests,
    userinfoPath: '/me',
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
