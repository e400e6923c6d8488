/**
 * Requests to device hostnames on a fleet's broker, for the proxy tests: the
 * broker's own CA, an operator's bearer key, the login form.
 */
import { readFile } from 'node:fs/promises';
import { dataPaths } from '../../../testkit/broker.js';
import { DOMAIN, deviceRequest, type DeviceRequestOptions, type Fleet } from '../../../testkit/operator-fixture.js';

export async function ca(f: Fleet): Promise<string> {
  return readFile(dataPaths(f.b.dir).tlsCert, 'utf8');
}

export async function get(f: Fleet, name: string, o: DeviceRequestOptions = {}) {
  return deviceRequest(f.b.broker.apiUrl, name, o, await ca(f));
}

export async function bearer(f: Fleet): Promise<Record<string, string>> {
  return { authorization: `Bearer ${(await f.b.apiKey('operator')).apiKey!}` };
}

export function cookieOf(setCookie: string[] | undefined): string {
  return setCookie![0]!.split(';')[0]!;
}

/** A request on the broker's own origin (`<domain>:<port>`, the API host), where operators sign in. */
export async function brokerRequest(f: Fleet, o: DeviceRequestOptions = {}) {
  const port = new URL(f.b.broker.apiUrl).port;
  return get(f, 'x', { ...o, path: o.path ?? '/', headers: { host: `${DOMAIN}:${port}`, ...o.headers } });
}

/** The sign-in form posted on the broker's origin for DEVICE: 303 to the device's callback with a one-time code, or a refusal. */
export async function brokerLogin(f: Fleet, device: string, apiKey: string, next = '/echo?x=1', extra: Record<string, string> = {}) {
  const body = new URLSearchParams({ apiKey, device, next }).toString();
  const port = new URL(f.b.broker.apiUrl).port;
  return brokerRequest(f, {
    method: 'POST', path: '/.certunnel/login', body,
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(body)), origin: `https://${DOMAIN}:${port}`, ...extra },
  });
}

/** Follows the broker's redirect LOCATION (the callback with its code) on device NAME's hostname. */
export async function redeem(f: Fleet, name: string, location: string) {
  const url = new URL(location);
  return get(f, name, { path: `${url.pathname}${url.search}` });
}

/** An operator's browser login for device NAME: the key on the broker's origin, then the code on the device's. */
export async function login(f: Fleet, name: string, apiKey: string, next = '/echo?x=1') {
  const signedIn = await brokerLogin(f, name, apiKey, next);
  return signedIn.status === 303 ? redeem(f, name, signedIn.headers.location!) : signedIn;
}


/** A browser session cookie (`name=value`) for device NAME, as an operator logs in. */
export async function sessionCookie(f: Fleet, name: string): Promise<string> {
  return cookieOf((await login(f, name, (await f.b.apiKey('operator')).apiKey!)).headers['set-cookie']);
}
