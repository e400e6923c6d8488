/**
 * provisioning/batch.ts against a real broker: one mint request, bundles
 * and manifest, idempotent re-runs, and the crash cases (after the mint,
 * in the middle of the bundles, a lost mint answer) reconciled so that the
 * manifest again lists exactly the broker's tokens of the batch.
 */
import test from 'ava';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type ApiClientOptions, ApiError, type ListTokensResponse, type MintTokensResponse, type TokenView } from '../../api/index.js';
import { readManifest, runBatch, type BatchOptions, type Manifest } from '../../provisioning/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { bundleSecrets, recordingDeps, tempDir } from './helpers.js';

async function brokerTokens(b: TestBroker, batch: string): Promise<TokenView[]> {
  return (await b.call<ListTokensResponse>(b.admin, 'GET', `/v1/tokens?batch=${batch}&limit=1000`)).items;
}

/** Every token the manifest knows: the devices' current ones and the discarded ones. */
function manifestTokenIds(m: Manifest): string[] {
  return [...m.devices.flatMap((d) => (d.tokenId ? [d.tokenId] : [])), ...m.discarded.map((d) => d.tokenId)].sort();
}

function options(outDir: string, provisioner: ApiClientOptions, extra: Partial<BatchOptions> = {}): BatchOptions {
  return { outDir, batch: 'line-7', count: 100, deviceUrl: provisioner.baseUrl, services: { http: '127.0.0.1:8080' }, ...extra };
}

const crashed = (): never => {
  throw new Error('simulated crash');
};

test('ok/batch of 100: one mint request, 100 bundles (0600, with the token), a manifest without secrets', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      const deps = recordingDeps(provisioner);
      const report = await runBatch(options(dir, provisioner, { namePrefix: 'kiosk' }), deps);
      t.is(report.mintedNow, 100);
      t.is(deps.calls.filter((c) => c === 'POST /v1/tokens').length, 1, 'one mint request');
      const m = (await readManifest(dir))!;
      t.is(m.status, 'complete');
      t.is(m.devices.length, 100);
      t.true(m.devices.every((d) => d.state === 'written' && d.tokenId !== null));
      t.deepEqual(m.devices.slice(0, 2).map((d) => [d.index, d.name, d.bundle]), [[1, 'kiosk-0001', 'bundles/line-7-0001.json'], [2, 'kiosk-0002', 'bundles/line-7-0002.json']]);
      const onBroker = await brokerTokens(b, 'line-7');
      t.deepEqual(onBroker.map((x) => x.id).sort(), manifestTokenIds(m));
      t.true(onBroker.every((x) => x.status === 'active'));
      t.is(onBroker.find((x) => x.id === m.devices[41]!.tokenId)!.bindName, 'kiosk-0042', 'names bound in order');

      for (const file of ['manifest.json', 'manifest.csv', 'bundles/line-7-0001.json', 'bundles/line-7-0100.json']) {
        t.is((await stat(join(dir, file))).mode & 0o777, 0o600, file);
      }
      t.is((await stat(join(dir, 'bundles'))).mode & 0o777, 0o700);
      const secrets = await bundleSecrets(dir);
      t.is(new Set(secrets).size, 100);
      const json = await readFile(join(dir, 'manifest.json'), 'utf8');
      const csv = await readFile(join(dir, 'manifest.csv'), 'utf8');
      t.false(secrets.some((s) => json.includes(s) || csv.includes(s)), 'no secret in the manifest');
      t.false(/cte_/.test(json + csv));
      t.false(b.logs.some((l) => secrets.some((s) => l.includes(s))), 'no secret in the broker logs');
      t.is(csv.split('\n')[0], 'index,name,serial,token_id,expires_at,state,token_status,bundle');
      t.is(csv.trim().split('\n').length, 101);
      const bundle = JSON.parse(await readFile(join(dir, 'bundles/line-7-0042.json'), 'utf8')) as { tokenId: string; agent: { enroll: { name: string } }; broker: { pin: string } };
      t.is(bundle.tokenId, m.devices[41]!.tokenId!);
      t.is(bundle.agent.enroll.name, 'kiosk-0042');
      t.is(bundle.broker.pin, b.init.apiPin);
    } finally {
      await cleanup();
    }
  });
});

test('ok/re-run is idempotent: nothing minted, nothing rewritten; a larger count mints only the missing devices', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await runBatch(options(dir, provisioner, { count: 10 }), recordingDeps(provisioner));
      const before = await readFile(join(dir, 'bundles/line-7-0003.json'), 'utf8');
      const mtime = (await stat(join(dir, 'bundles/line-7-0003.json'))).mtimeMs;
      const deps = recordingDeps(provisioner);
      const again = await runBatch(options(dir, provisioner, { count: 10 }), deps);
      t.is(again.mintedNow, 0);
      t.is(again.alreadyWritten, 10);
      t.false(deps.calls.includes('POST /v1/tokens'), 'no mint request');
      t.is(await readFile(join(dir, 'bundles/line-7-0003.json'), 'utf8'), before);
      t.is((await stat(join(dir, 'bundles/line-7-0003.json'))).mtimeMs, mtime);

      const more = await runBatch(options(dir, provisioner, { count: 25 }), recordingDeps(provisioner));
      t.is(more.mintedNow, 15);
      t.is(more.alreadyWritten, 10);
      const m = (await readManifest(dir))!;
      t.is(m.devices.length, 25);
      t.is((await brokerTokens(b, 'line-7')).length, 25);
      t.is(await readFile(join(dir, 'bundles/line-7-0003.json'), 'utf8'), before);
    } finally {
      await cleanup();
    }
  });
});

test('fail/mismatches: a batch name already on the broker, other settings, a shrinking count, other serials', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await b.call(b.admin, 'POST', '/v1/tokens', { count: 1, batch: 'taken' });
      await t.throwsAsync(runBatch(options(join(dir, 'a'), provisioner, { batch: 'taken', count: 2 }), recordingDeps(provisioner)), { code: 'BATCH_NOT_EMPTY' });

      const out = join(dir, 'b');
      await runBatch(options(out, provisioner, { count: 3, serials: ['SN1', 'SN2', 'SN3'] }), recordingDeps(provisioner));
      await t.throwsAsync(runBatch(options(out, provisioner, { count: 3, serials: ['SN1', 'SN2', 'SN3'], services: { http: '127.0.0.1:9' } }), recordingDeps(provisioner)), { code: 'MANIFEST_MISMATCH' });
      await t.throwsAsync(runBatch(options(out, provisioner, { count: 2, serials: ['SN1', 'SN2'] }), recordingDeps(provisioner)), { code: 'MANIFEST_MISMATCH' });
      await t.throwsAsync(runBatch(options(out, provisioner, { count: 3, serials: ['SN1', 'SNX', 'SN3'] }), recordingDeps(provisioner)), { code: 'MANIFEST_MISMATCH' });
      await t.throwsAsync(runBatch(options(out, provisioner, { batch: 'other', count: 3, serials: ['SN1', 'SN2', 'SN3'] }), recordingDeps(provisioner)), { code: 'MANIFEST_MISMATCH' });
      await t.throwsAsync(runBatch(options(join(dir, 'c'), provisioner, { count: 2, serials: ['SN1'] }), recordingDeps(provisioner)), { code: 'BAD_ARGUMENT' });
      // A config the agent would refuse is refused before anything is minted.
      await t.throwsAsync(runBatch(options(join(dir, 'd'), provisioner, { batch: 'd', services: { mqtt: '127.0.0.1:1883' } }), recordingDeps(provisioner)), { code: 'BAD_ARGUMENT' });
      t.is((await brokerTokens(b, 'd')).length, 0);
      const serials = (await brokerTokens(b, 'line-7')).map((x) => x.bindSerial).sort();
      t.deepEqual(serials, ['SN1', 'SN2', 'SN3']);
      // An operator key may not mint.
      const operator = await b.apiKey('operator');
      await t.throwsAsync(runBatch(options(join(dir, 'e'), operator, { batch: 'e' }), recordingDeps(operator)), { code: 'FORBIDDEN' });
    } finally {
      await cleanup();
    }
  });
});

test('crash/after the mint, before any bundle: the manifest names every minted token; a re-run revokes them and mints again', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await t.throwsAsync(runBatch(options(dir, provisioner), recordingDeps(provisioner, { faults: { afterMint: crashed } })), { message: 'simulated crash' });
      const afterCrash = (await readManifest(dir))!;
      t.is(afterCrash.status, 'incomplete');
      t.is(afterCrash.pendingMint, null);
      t.true(afterCrash.devices.every((d) => d.state === 'minted'));
      const minted = await brokerTokens(b, 'line-7');
      t.deepEqual(minted.map((x) => x.id).sort(), manifestTokenIds(afterCrash), 'the manifest says exactly which tokens exist');

      const report = await runBatch(options(dir, provisioner), recordingDeps(provisioner));
      t.is(report.discardedNow.length, 100);
      t.true(report.discardedNow.every((d) => d.reason === 'secret-lost' && d.status === 'revoked'));
      t.is(report.mintedNow, 100);
      const m = (await readManifest(dir))!;
      t.is(m.status, 'complete');
      const all = await brokerTokens(b, 'line-7');
      t.is(all.length, 200);
      t.deepEqual(all.map((x) => x.id).sort(), manifestTokenIds(m));
      const byId = new Map(all.map((x) => [x.id, x.status]));
      t.true(minted.every((x) => byId.get(x.id) === 'revoked'), 'the lost tokens are revoked');
      t.true(m.devices.every((d) => byId.get(d.tokenId!) === 'active'));
      t.regex(await readFile(join(dir, 'manifest.csv'), 'utf8'), /,discarded:secret-lost,revoked,/);
    } finally {
      await cleanup();
    }
  });
});

test('crash/in the middle of the bundles: written ones are recovered from disk, only the lost ones are revoked', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      const faults = { afterBundle: (i: number) => (i === 40 ? crashed() : undefined) };
      await t.throwsAsync(runBatch(options(dir, provisioner), recordingDeps(provisioner, { faults })));
      const first = (await readManifest(dir))!;
      const report = await runBatch(options(dir, provisioner), recordingDeps(provisioner));
      t.is(report.recovered, 40);
      t.is(report.discardedNow.length, 60);
      t.deepEqual(report.discardedNow.map((d) => d.index), Array.from({ length: 60 }, (_, i) => i + 41));
      t.is(report.mintedNow, 60);
      const m = (await readManifest(dir))!;
      t.is(m.status, 'complete');
      t.deepEqual(m.devices.slice(0, 40).map((d) => d.tokenId), first.devices.slice(0, 40).map((d) => d.tokenId), 'the first 40 keep their tokens');
      const all = await brokerTokens(b, 'line-7');
      t.deepEqual(all.map((x) => x.id).sort(), manifestTokenIds(m));
      t.is(all.filter((x) => x.status === 'active').length, 100);
      t.is(all.filter((x) => x.status === 'revoked').length, 60);
    } finally {
      await cleanup();
    }
  });
});

test('crash/the mint answer is lost: pendingMint says so; a re-run revokes the unknown tokens of the batch', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await runBatch(options(dir, provisioner, { count: 5 }), recordingDeps(provisioner));
      const deps = recordingDeps(provisioner);
      const real = deps.api;
      const lossy = recordingDeps(provisioner, {
        api: async <T>(method: string, path: string, body?: unknown): Promise<T> => {
          const res = await real<T>(method, path, body);
          if (method === 'POST' && path === '/v1/tokens') throw new ApiError('UNREACHABLE', 'connection reset');
          return res;
        },
      });
      await t.throwsAsync(runBatch(options(dir, provisioner, { count: 8 }), lossy), { code: 'MINT_FAILED' });
      const m1 = (await readManifest(dir))!;
      t.deepEqual(m1.pendingMint?.count, 3);
      t.is((await brokerTokens(b, 'line-7')).length, 8, 'the broker minted them');

      const report = await runBatch(options(dir, provisioner, { count: 8 }), recordingDeps(provisioner));
      t.is(report.discardedNow.length, 3);
      t.true(report.discardedNow.every((d) => d.reason === 'response-lost' && d.status === 'revoked' && d.index === null));
      t.is(report.mintedNow, 3);
      const m = (await readManifest(dir))!;
      t.is(m.pendingMint, null);
      const all = await brokerTokens(b, 'line-7');
      t.is(all.length, 11);
      t.deepEqual(all.map((x) => x.id).sort(), manifestTokenIds(m));
    } finally {
      await cleanup();
    }
  });
});

test('ok/a refused mint leaves no pending mint; tokens minted elsewhere into the batch are reported, never revoked', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await t.throwsAsync(runBatch(options(dir, provisioner, { count: 6 }), recordingDeps(provisioner)), { code: 'MINT_FAILED' });
      t.is((await readManifest(dir))!.pendingMint, null);
      await runBatch(options(dir, provisioner, { count: 5 }), recordingDeps(provisioner));
      const foreign = await b.call<MintTokensResponse>(b.admin, 'POST', '/v1/tokens', { count: 1, batch: 'line-7' });
      const report = await runBatch(options(dir, provisioner, { count: 5 }), recordingDeps(provisioner));
      t.deepEqual(report.foreign, [foreign.tokens[0]!.id]);
      t.is(report.discardedNow.length, 0);
      t.is((await brokerTokens(b, 'line-7')).find((x) => x.id === foreign.tokens[0]!.id)!.status, 'active');
    } finally {
      await cleanup();
    }
  }, { config: { tokens: { maxBatch: 5 } } });
});

test('fail/one run per output directory: a live lock refuses, a dead one is taken over', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      await runBatch(options(dir, provisioner, { count: 1 }), recordingDeps(provisioner));
      await writeFile(join(dir, '.batch.lock'), `${process.pid}\n`);
      await t.throwsAsync(runBatch(options(dir, provisioner, { count: 1 }), recordingDeps(provisioner)), { code: 'BATCH_LOCKED' });
      await writeFile(join(dir, '.batch.lock'), '4194304\n'); // above pid_max: never alive
      await t.notThrowsAsync(runBatch(options(dir, provisioner, { count: 1 }), recordingDeps(provisioner)));
    } finally {
      await cleanup();
    }
  });
});

test('ok/--ttl sets the expiry; devices get their own URL and pin when the factory reaches the broker another way', async (t) => {
  await withBroker(async (b) => {
    const { dir, cleanup } = await tempDir('certunnel-batch-');
    try {
      const provisioner = await b.apiKey('provisioner');
      const devicePin = `sha256//${'B'.repeat(43)}=`;
      const before = Date.now();
      await runBatch(options(dir, provisioner, { count: 2, ttlSeconds: 3600, deviceUrl: 'https://broker.fleet.example.com:8443', devicePin }), recordingDeps(provisioner));
      const bundle = JSON.parse(await readFile(join(dir, 'bundles/line-7-0002.json'), 'utf8')) as { expiresAt: string; agent: { broker: { url: string; pin: string } }; broker: { url: string } };
      const ttl = Date.parse(bundle.expiresAt) - before;
      t.true(ttl > 3590_000 && ttl < 3610_000, String(ttl));
      t.deepEqual(bundle.agent.broker, { url: 'https://broker.fleet.example.com:8443', pin: devicePin });
      t.is(bundle.broker.url, 'https://broker.fleet.example.com:8443');
      await t.throwsAsync(runBatch(options(join(dir, 'x'), provisioner, { batch: 'x', ttlSeconds: 30 }), recordingDeps(provisioner)), { code: 'BAD_ARGUMENT' });
    } finally {
      await cleanup();
    }
  });
});
