/**
 * How operator commands find the API: --api/--api-key/--pin flags, or the
 * CERTUNNEL_API_URL / CERTUNNEL_API_KEY / CERTUNNEL_API_PIN environment, or a
 * local broker's data directory (--data) for the URL and pin.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { type ApiClientOptions, apiRequest } from '../api/index.js';
import { dataPaths, loadConfig, localApiUrl, splitHostPort } from '../broker/compose/index.js';
import { CliError, notice } from './output.js';

export interface ApiFlags {
  api?: string;
  apiKey?: string;
  pin?: string;
  data?: string;
  json?: boolean;
}

export function addApiOptions(cmd: Command): Command {
  return cmd
    .option('--api <url>', 'broker API URL (or CERTUNNEL_API_URL)')
    .option('--api-key <key>', 'API key (or CERTUNNEL_API_KEY; prefer the environment)')
    .option('--pin <sha256//…>', "the broker's TLS key pin (or CERTUNNEL_API_PIN)")
    .option('--data <dir>', 'read the API URL and pin from a local broker data directory')
    .option('--json', 'print JSON for scripts');
}

export async function resolveApi(flags: ApiFlags, env: NodeJS.ProcessEnv): Promise<ApiClientOptions> {
  // An empty variable (`CERTUNNEL_API_PIN= certunnel …`) is an unset one, so --data still fills it in.
  let baseUrl = flags.api ?? (env.CERTUNNEL_API_URL || undefined);
  let pin = flags.pin ?? (env.CERTUNNEL_API_PIN || undefined);
  if (flags.data) {
    const config = await loadConfig({ dataDir: flags.data, env });
    const paths = dataPaths(flags.data);
    // A running broker records the address it bound (the configured port may be 0).
    const running = await readFile(paths.runtime, 'utf8').then((text) => (JSON.parse(text) as { apiUrl?: string }).apiUrl, () => undefined);
    baseUrl ??= running ?? config.api.publicUrl ?? localApiUrl(config, splitHostPort(config.api.listen).port);
    if (!config.api.insecureHttp) pin ??= (await readFile(paths.apiPin, 'utf8')).trim();
  }
  if (!baseUrl) throw new CliError('BAD_ARGUMENT', 'no API URL: give --api, CERTUNNEL_API_URL or --data');
  const apiKey = flags.apiKey ?? env.CERTUNNEL_API_KEY;
  if (!apiKey) throw new CliError('UNAUTHENTICATED', 'no API key: set CERTUNNEL_API_KEY (or --api-key)');
  if (baseUrl.startsWith('https:') && !pin) {
    notice('no --pin given; verifying the broker with the system CA store');
  }
  return { baseUrl, apiKey, pin };
}

export async function callApi<T>(flags: ApiFlags, env: NodeJS.ProcessEnv, method: string, path: string, body?: unknown): Promise<T> {
  return apiRequest<T>(await resolveApi(flags, env), method, path, body);
}
