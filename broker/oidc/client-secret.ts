/**
 * The OIDC client secret, read once by the entry point: from the file
 * oidc.clientSecretFile names (absolute, or relative to the data
 * directory; one trailing newline ignored), else from the environment
 * variable CERTUNNEL_OIDC_CLIENT_SECRET. Never from config.json (the schema
 * refuses it there) and never in a message: errors name the file or the
 * variable, not the value.
 */
import { readFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { BrokerError } from '../core/errors.js';
import type { OidcConfig } from '../core/oidc-config.js';

export const OIDC_CLIENT_SECRET_ENV = 'CERTUNNEL_OIDC_CLIENT_SECRET';

/** The secret, or undefined for a public client (tokenEndpointAuthMethod none). Throws CONFIG_INVALID when a confidential client has none. */
export async function readOidcClientSecret(oidc: OidcConfig, dataDir: string, env: Readonly<Record<string, string | undefined>>): Promise<string | undefined> {
  if (oidc.tokenEndpointAuthMethod === 'none') return undefined;
  let secret: string | undefined;
  if (oidc.clientSecretFile !== undefined) {
    const path = isAbsolute(oidc.clientSecretFile) ? oidc.clientSecretFile : join(dataDir, oidc.clientSecretFile);
    try {
      secret = (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new BrokerError('CONFIG_INVALID', `config field oidc.clientSecretFile: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    if (secret === '') throw new BrokerError('CONFIG_INVALID', `config field oidc.clientSecretFile: ${path} is empty`);
  } else {
    secret = env[OIDC_CLIENT_SECRET_ENV] || undefined;
    if (secret === undefined) throw new BrokerError('CONFIG_INVALID', `oidc: no client secret: set oidc.clientSecretFile or ${OIDC_CLIENT_SECRET_ENV} (or tokenEndpointAuthMethod "none" for a public client)`);
  }
  if (/[\r\n]/.test(secret)) throw new BrokerError('CONFIG_INVALID', 'oidc: the client secret must be one line');
  return secret;
}
