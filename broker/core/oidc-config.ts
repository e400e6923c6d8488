/**
 * The `oidc` section of the broker's configuration: single sign-on to the
 * console with OpenID Connect (broker/oidc). Optional: without it the
 * console signs in with API keys only. The client secret is not part of
 * the config file (secrets travel apart from it, as the CA passphrase
 * does): it comes from the file clientSecretFile names or from the
 * environment variable CERTUNNEL_OIDC_CLIENT_SECRET, read once by the entry
 * point (broker/oidc/client-secret.ts).
 */
import { z } from 'zod';

/** The roles an identity provider's claim may map to: those of API keys, without `proxy` (a console user is never proxy-only). */
export const OIDC_ROLES = ['admin', 'operator', 'provisioner'] as const;
export type OidcRole = (typeof OIDC_ROLES)[number];

/** Where the console's sign-in lives on the broker's origin. */
export const OIDC_LOGIN_PATH = '/console/oidc/login';
export const OIDC_CALLBACK_PATH = '/console/oidc/callback';

/** A claim name (`groups`, `https://example.com/roles`) or a path into nested claims (Keycloak's `["realm_access", "roles"]`). */
const claimPath = z.union([z.string().min(1).max(256), z.array(z.string().min(1).max(256)).min(1).max(8)]);

/** zod runs refinements after a failed check too: every URL is parsed with URL.canParse first. */
const protocolOf = (u: string): string | undefined => (URL.canParse(u) ? new URL(u).protocol : undefined);
const httpUrl = z.string().refine((u) => /^https?:$/.test(protocolOf(u) ?? ''), 'must be an http(s) URL');

export const oidcConfigSchema = z
  .object({
    /** The provider's Issuer Identifier; its /.well-known/openid-configuration is read at start. */
    issuer: httpUrl,
    clientId: z.string().min(1).max(512),
    /** Refused with a message that says where the secret goes instead (it never echoes the value). */
    clientSecret: z
      .undefined({ error: 'the client secret is not kept in config.json: put it in a file named by oidc.clientSecretFile, or in CERTUNNEL_OIDC_CLIENT_SECRET' })
      .optional(),
    /**
     * A file holding the client secret (absolute, or relative to the data directory; trailing newline ignored).
     * Without it the secret is read from CERTUNNEL_OIDC_CLIENT_SECRET.
     */
    clientSecretFile: z.string().min(1).optional(),
    /**
     * How the broker authenticates at the token endpoint (client metadata token_endpoint_auth_method).
     * `none`: a public client, PKCE only, no secret.
     */
    tokenEndpointAuthMethod: z.enum(['client_secret_basic', 'client_secret_post', 'none']).default('client_secret_basic'),
    /** Where the provider sends the browser back; default `<api.publicUrl>/console/oidc/callback`. Register it at the provider. */
    redirectUrl: httpUrl.optional(),
    /** Where the provider's logout sends the browser back; default `<api.publicUrl>/console/`. */
    postLogoutRedirectUrl: httpUrl.optional(),
    scopes: z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'must be a scope token')).min(1).max(32).default(['openid', 'email', 'profile']),
    /** The claim listing the user's groups or roles (read from the ID token, else from the userinfo endpoint). */
    groupsClaim: claimPath.default('groups'),
    /** Claim value → role. A user with several mapped values gets the strongest role (admin > operator > provisioner); none: refused (OIDC_NO_ROLE). */
    roles: z.record(z.string().min(1).max(512), z.enum(OIDC_ROLES)).refine((r) => Object.keys(r).length > 0, 'must map at least one claim value to a role'),
    /** How long a console session from a single sign-on lasts. */
    sessionMinutes: z.number().int().min(5).max(7 * 24 * 60).default(8 * 60),
    /** How long a started sign-in may take at the provider before its callback is refused (OIDC_STATE_EXPIRED). */
    loginTimeoutSeconds: z.number().int().min(30).max(3600).default(600),
    /** Seconds to wait for the provider (discovery, token, userinfo). */
    requestTimeoutSeconds: z.number().int().min(1).max(120).default(10),
    /** TESTS ONLY: let the broker talk to an http:// issuer (openid-client's allowInsecureRequests). Never in production. */
    allowInsecureIssuer: z.boolean().default(false),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (o.tokenEndpointAuthMethod === 'none' && o.clientSecretFile !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['clientSecretFile'], message: 'a public client (tokenEndpointAuthMethod none) has no secret' });
    }
    if (!o.allowInsecureIssuer && protocolOf(o.issuer) === 'http:') {
      ctx.addIssue({ code: 'custom', path: ['issuer'], message: 'must be https (allowInsecureIssuer is for tests only)' });
    }
    if (!o.scopes.includes('openid')) ctx.addIssue({ code: 'custom', path: ['scopes'], message: 'must include openid' });
  });

export type OidcConfig = Readonly<z.infer<typeof oidcConfigSchema>>;
