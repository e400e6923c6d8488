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

export async function login(f: Fleet, name: string, apiKey: string, next = '/echo?x=1', extra: Record<string, string> = {}) {
  const body = new URLSearchParams({ apiKey, next }).toString();
  return get(f, name, {
    method: 'POST', path: '/.certunnel/login', body,
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(body)), origin: `https://${name}.${DOMAIN}`, ...extra },
  });
}

