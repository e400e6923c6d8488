/**
 * api.trustProxy against a real broker, every combination with
 * api.insecureHttp: which client address lands in the audit trail (the koa
 * API, the HTTP proxy) and in the proxy's failed-key limiter. A data
 * directory from before the setting (api.insecureHttp alone) behaves as it
 * did and warns at start; nginx's auth_request on loopback is believed
 * whatever the setting.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AuditEventView, ListAuditResponse } from '../../../api/index.js';
import { dataPaths, withBroker, type TestBroker } from '../../../testkit/broker.js';
import { DOMAIN, deviceRequest } from '../../../testkit/operator-fixture.js';

const WRONG_KEY = { authorization: 'Bearer ctk_notakey0000000000000000000000000000000000' };


/** GET PATH on the broker's API hostname with HEADERS; the status. */
async function apiGet(b: TestBroker, path: string, headers: Record<string, string>): Promise<number> {
  const url = new URL(path, b.broker.apiUrl);
  const https = url.protocol === 'https:';
  const ca = https ? await readFile(dataPaths(b.dir).tlsCert, 'utf8') : undefined;
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(url, { headers, agent: false, ...(https ? { ca, servername: 'localhost' } : {}) }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A wrong bearer key for a device hostname from the forwarded client CLIENT; the status. */
async function proxyGuess(b: TestBroker, client: string): Promise<number> {
  const ca = await readFile(dataPaths(b.dir).tlsCert, 'utf8');
  return (await deviceRequest(b.broker.apiUrl, 'kiosk', { headers: { ...WRONG_KEY, 'x-forwarded-for': `203.0.113.66, ${client}` } }, ca)).status;
}

async function failures(b: TestBroker): Promise<AuditEventView[]> {
  return (await b.call<ListAuditResponse>(b.admin, 'GET', '/v1/audit?action=auth.failure')).items;
}

const combos: Array<[string, { insecureHttp: boolean; trustProxy?: boolean }, boolean]> = [
  // name, api section, X-Forwarded-For believed
  ['ok/old data dir: insecureHttp alone trusts the proxy, and warns', { insecureHttp: true }, true],
  ['ok/insecureHttp + trustProxy', { insecureHttp: true, trustProxy: true }, true],
  ['ok/insecureHttp + trustProxy false: X-Forwarded-For ignored', { insecureHttp: true, trustProxy: false }, false],
  ['ok/HTTPS + trustProxy: a balancer in front that adds X-Forwarded-For is believed', { insecureHttp: false, trustProxy: true }, true],
  ['ok/HTTPS + trustProxy false', { insecureHttp: false, trustProxy: false }, false],
  ['ok/HTTPS, trustProxy unset: not believed, no warning', { insecureHttp: false }, false],
];

for (const [name, api, trusted] of combos) {
  test(name, (t) =>
    withBroker(async (b) => {
      const config = JSON.parse(await readFile(dataPaths(b.dir).config, 'utf8')) as { api: Record<string, unknown> };
      t.is('trustProxy' in config.api, api.trustProxy !== undefined, 'config.json holds trustProxy only when set');
      const peer = '127.0.0.1';
      const expect = (client: string): string => (trusted ? client : peer);

      // The koa API: a refused key is audited from the client address.
      t.is(await apiGet(b, '/v1/devices', { ...WRONG_KEY, 'x-forwarded-for': '203.0.113.66, 198.51.100.20' }), 401);
      // The HTTP proxy: audited alike, and the failure is charged to that address.
      t.is(await proxyGuess(b, '198.51.100.21'), 401);
      const rows = await failures(b);
      t.like(rows.find((r) => r.target === '/v1/devices'), { actor: 'anonymous', remoteAddr: expect('198.51.100.20'), outcome: 'UNAUTHENTICATED', details: {} });
      t.like(rows.find((r) => r.target === `kiosk.${DOMAIN}`), { actor: 'anonymous', remoteAddr: expect('198.51.100.21'), outcome: 'UNAUTHENTICATED', details: { via: 'proxy' } });

      // The limiter (one failure per address here): the same client is limited; another
      // forwarded client has its own bucket only when X-Forwarded-For is believed.
      t.is(await proxyGuess(b, '198.51.100.21'), 429);
      t.is(await proxyGuess(b, '198.51.100.22'), trusted ? 401 : 429);

      // nginx on this host: its auth_request names the client, whatever api.trustProxy says.
      const authorize = await apiGet(b, '/v1/proxy/authorize', { ...WRONG_KEY, 'x-forwarded-host': `kiosk.${DOMAIN}`, 'x-forwarded-for': '198.51.100.23' });
      t.is(authorize, 401);
      t.true((await failures(b)).some((r) => r.remoteAddr === '198.51.100.23'), 'the loopback peer is believed');

      const warned = b.logs.some((line) => line.includes('"level":"warn"') && line.includes('api.trustProxy'));
      t.is(warned, api.insecureHttp && api.trustProxy === undefined, 'warns only while insecureHttp alone decides');
    }, { config: { domain: DOMAIN, api, proxy: { authFailureBurst: 1, authFailuresPerMinute: 0.1 } } }),
  );
}
