/**
 * Commands that name one device (`device show|revoke`, `ssh`, `ssh-proxy`):
 * a DEVICE_UNKNOWN answer names what was asked and suggests the nearest
 * name. The suggestion comes from the device list under the caller's own key,
 * so a key that may not list devices (provisioner) learns no name from it.
 */
import { ApiError, type ListDevicesResponse } from '../api/index.js';
import { callApi, type ApiFlags } from './api-connection.js';
import { CliError } from './output.js';

/** At most this many names are read for a suggestion (pages of the device list). */
const SUGGESTION_SCAN_LIMIT = 5000;

/** Levenshtein distance, case-insensitive: `Kiosk-7` is 0 from `kiosk-7`, `kiosk-001` is 1 from `kiosk-0001`. */
export function editDistance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let previous = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const row = [i];
    for (let j = 1; j <= y.length; j++) row.push(Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1)));
    previous = row;
  }
  return previous[y.length]!;
}

/** The nearest of NAMES to WANTED, if near enough to be a typo (a third of its length, at least 1, at most 3). */
export function nearestName(wanted: string, names: readonly string[]): string | undefined {
  const limit = Math.min(3, Math.max(1, Math.floor(wanted.length / 3)));
  let best: { name: string; distance: number } | undefined;
  for (const name of names) {
    const distance = editDistance(wanted, name);
    if (distance <= limit && (!best || distance < best.distance)) best = { name, distance };
  }
  return best?.name;
}

async function deviceNames(flags: ApiFlags, env: NodeJS.ProcessEnv): Promise<string[]> {
  const names: string[] = [];
  let cursor: string | null = null;
  do {
    const page: ListDevicesResponse = await callApi(flags, env, 'GET', `/v1/devices?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    for (const d of page.items) if (d.name) names.push(d.name);
    cursor = page.nextCursor;
  } while (cursor && names.length < SUGGESTION_SCAN_LIMIT);
  return names;
}

/** Calls /v1/devices/<REF><SUFFIX>; an unknown device becomes DEVICE_UNKNOWN naming REF and, if one is near, the name meant. */
export async function callDeviceApi<T>(flags: ApiFlags, env: NodeJS.ProcessEnv, method: string, ref: string, suffix = '', body?: unknown): Promise<T> {
  try {
    return await callApi<T>(flags, env, method, `/v1/devices/${encodeURIComponent(ref)}${suffix}`, body);
  } catch (err) {
    if (!(err instanceof ApiError) || err.code !== 'DEVICE_UNKNOWN') throw err;
    // No suggestion when the key may not list devices, or the list fails: the answer is then just the name asked for.
    const nearest = nearestName(ref, await deviceNames(flags, env).catch(() => []));
    throw new CliError('DEVICE_UNKNOWN', `no device named (or with id) ${JSON.stringify(ref)}${nearest ? `; did you mean ${nearest}?` : ''}`);
  }
}
