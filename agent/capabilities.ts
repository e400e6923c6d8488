/**
 * What the agent tells the broker it can do (`capabilities` in enrollment
 * and renewal requests, api/device.ts AGENT_CAPABILITIES). Brokers before
 * 0.5 refuse unknown fields (broker/http/schemas.ts: BAD_REQUEST
 * "body: unknown field(s): capabilities"): on exactly that refusal the
 * request is sent once more without the field, and the broker is remembered
 * as one that refuses it for the rest of the process.
 */
import { AGENT_CAPABILITIES, type ApiCall, type ApiClientOptions, ApiError } from '../api/index.js';

/** The capabilities this agent has. */
export const OWN_CAPABILITIES: readonly string[] = [AGENT_CAPABILITIES.trustSet];

/** Broker URLs that refused the field in this process. */
const refusing = new Set<string>();

/** Whether ERR is an older broker's refusal of the `capabilities` field itself (not of its value). */
export function refusesCapabilitiesField(err: unknown): boolean {
  return err instanceof ApiError && err.code === 'BAD_REQUEST' && /unknown field\(s\):[^;]*\bcapabilities\b/.test(err.message);
}

/**
 * Sends BODY with `capabilities` (unless this broker refused them before);
 * on an older broker's refusal of the field, once more without it.
 */
export async function callWithCapabilities<T>(api: ApiCall, options: ApiClientOptions, method: string, path: string, body: object): Promise<T> {
  const bare = { ...body } as Record<string, unknown>;
  delete bare.capabilities;
  if (refusing.has(options.baseUrl)) return api<T>(options, method, path, bare);
  try {
    return await api<T>(options, method, path, { ...bare, capabilities: [...OWN_CAPABILITIES] });
  } catch (err) {
    if (!refusesCapabilitiesField(err)) throw err;
    refusing.add(options.baseUrl);
    return api<T>(options, method, path, bare);
  }
}

/** Whether the broker at URL refused capabilities in this process (tests). */
export function brokerRefusedCapabilities(url: string): boolean {
  return refusing.has(url);
}
