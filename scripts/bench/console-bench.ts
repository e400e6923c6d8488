/**
 * The console's fleet list at scale: a broker with N devices (default
 * 10,000; each with labels and a certificate, a third of them online, some
 * revoked) answers GET /v1/devices pages of 50, as the console asks for
 * them: the first page in each order, a page deep into the list (cursor
 * paging), a name search, a label filter, the online filter. Prints p50 and
 * p99 latency per query over real HTTPS (the broker runs in this process,
 * testkit's withBroker; its store is filled directly, not through enrollment).
 * Usage: npm run bench:console [-- --devices 10000 --rounds 30]
 */
import { Agent, request } from 'node:https';
import { formatPublicKey, fingerprint, generateKeyPair } from '../../ca/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { consoleAssetSizes } from '../../broker/http/routes-console.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const DEVICES = arg('devices', 10_000);
const ROUNDS = arg('rounds', 30);
const PAGE = 50;
const agent = new Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });

function get(b: TestBroker, path: string): Promise<{ status: number; json: { items: unknown[]; nextCursor: string | null } }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, b.broker.apiUrl), { agent, headers: { authorization: `Bearer ${b.init.adminKey}` } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString()) as never }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function seed(b: TestBroker): Promise<void> {
  const store = b.broker.store;
  const now = b.clock.now();
  // One key for all: the fingerprint must be unique, so vary the stored one (listing never parses the key).
  const key = formatPublicKey(generateKeyPair().publicKey);
  const fp = fingerprint(generateKeyPair().publicKey);
  for (let start = 0; start < DEVICES; start += 500) {
    await store.transaction(async (tx) => {
      for (let i = start; i < Math.min(start + 500, DEVICES); i++) {
        const id = `dev_${String(i).padStart(16, '0')}`;
        await tx.insertDevice({
          id, name: `kiosk-${String(i).padStart(5, '0')}`, hardwareSerial: null, publicKey: key, keyFingerprint: `${fp}-${i}`,
          labels: { site: `site-${i % 40}`, stage: i % 2 ? 'main' : 'side' }, tokenId: null, createdAt: new Date(now.getTime() - (DEVICES - i) * 1000),
        });
        const serial = await tx.nextSerial();
        await tx.insertCertificate({
          serial, deviceId: id, kind: 'device', keyFingerprint: fp, keyId: `device:${id}`, principal: 'ports-20000-20001',
          validAfter: now, validBefore: new Date(now.getTime() + 3600_000), issuedAt: now,
        });
        if (i % 3 === 0) await tx.setDeviceOnline(id, { online: true, since: now, remoteAddr: '198.51.100.7', lastSeen: now });
        else if (i % 7 === 0) await tx.setDeviceOnline(id, { online: false, since: null, remoteAddr: null, lastSeen: new Date(now.getTime() - i * 1000) });
        if (i % 50 === 0) await tx.markDeviceRevoked(id, 'system', 'bench', now);
      }
    });
  }
}

const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function measure(b: TestBroker, label: string, path: string): Promise<string> {
  const ms: number[] = [];
  let items = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const p = path;
    const t0 = performance.now();
    const res = await get(b, p);
    ms.push(performance.now() - t0);
    if (res.status !== 200) throw new Error(`${label}: ${res.status}`);
    items = res.json.items.length;
  }
  ms.sort((x, y) => x - y);
  return `${label.padEnd(44)} ${String(items).padStart(5)} ${pct(ms, 50).toFixed(1).padStart(8)} ${pct(ms, 99).toFixed(1).padStart(8)}`;
}

await withBroker(
  async (b) => {
    const t0 = performance.now();
    await seed(b);
    console.log(`seeded ${DEVICES} devices with certificates in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    // A cursor about 60 % into the list, found once by walking it (what "Next page" does page by page).
    let cursor: string | null = null;
    for (let pages = 0; pages < Math.floor((DEVICES * 0.6) / 1000); pages++) {
      cursor = (await get(b, `/v1/devices?limit=1000${cursor ? `&cursor=${cursor}` : ''}`)).json.nextCursor;
    }
    const deep = cursor;
    const rows = [
      await measure(b, 'first page, enrolled order', `/v1/devices?limit=${PAGE}`),
      await measure(b, 'first page, by name', `/v1/devices?limit=${PAGE}&sort=name`),
      await measure(b, 'first page, by last seen', `/v1/devices?limit=${PAGE}&sort=lastSeen`),
      await measure(b, 'a page 60 % in (cursor)', `/v1/devices?limit=${PAGE}${deep ? `&cursor=${deep}` : ''}`),
      await measure(b, 'search name "99" (substring)', `/v1/devices?limit=${PAGE}&name=99`),
      await measure(b, 'label site=site-7', `/v1/devices?limit=${PAGE}&label=site%3Dsite-7`),
      await measure(b, 'online only, by name', `/v1/devices?limit=${PAGE}&status=active&online=true&sort=name`),
      await measure(b, 'revoked only', `/v1/devices?limit=${PAGE}&status=revoked`),
    ];
    console.log(`\nGET /v1/devices over HTTPS, ${DEVICES} devices, pages of ${PAGE}, ${ROUNDS} rounds each, one connection`);
    console.log(`${'query'.padEnd(44)} ${'items'.padStart(5)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}`);
    for (const row of rows) console.log(row);
    console.log('\nshipped console assets (served by the broker):');
    for (const a of consoleAssetSizes()) console.log(`  ${a.name.padEnd(12)} ${String(a.bytes).padStart(7)} B raw  ${String(a.gzipBytes).padStart(6)} B gzip`);
    const total = consoleAssetSizes().reduce((s, a) => s + a.gzipBytes, 0);
    console.log(`  total gzip: ${total} B`);
  },
  { logLevel: 'warn' },
);
agent.destroy();
