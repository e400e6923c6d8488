/**
 * Which requests are for a device: a Host header `<device-name>.<domain>`
 * (one DNS label, as device names are) that is not one of the broker's own
 * names. Everything else is the API.
 */
import { DEVICE_NAME } from '../../api/index.js';

/** The host part of a Host header, lower-cased, without port and trailing dot; undefined for IP literals. */
export function hostOf(header: string | undefined): string | undefined {
  if (!header || header.startsWith('[')) return undefined;
  const host = header.replace(/:\d*$/, '').replace(/\.$/, '').toLowerCase();
  return /^[0-9.]+$/.test(host) ? undefined : host;
}

export interface DeviceHostMatcher {
  /** The device name HOSTHEADER addresses, or undefined when the request is for the API. */
  (hostHeader: string | undefined): string | undefined;
}

/**
 * RESERVED: the broker's own names (API, SSH endpoint). A broker whose API
 * lives at api.<domain> keeps it: a device named "api" is then not proxied.
 */
export function deviceHostMatcher(domain: string, reserved: readonly string[]): DeviceHostMatcher {
  const suffix = `.${domain.toLowerCase().replace(/\.$/, '')}`;
  const own = new Set(reserved.map((h) => h.toLowerCase()));
  return (hostHeader) => {
    const host = hostOf(hostHeader);
    if (!host || !host.endsWith(suffix) || own.has(host)) return undefined;
    const label = host.slice(0, -suffix.length);
    return DEVICE_NAME.test(label) ? label : undefined;
  };
}
