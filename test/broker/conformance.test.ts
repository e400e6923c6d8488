/**
 * DESIGN.md: "The same matrix of certificates and requests must get the same
 * verdicts from both modes." Every case of testkit/conformance/cases.ts runs
 * against (a) the embedded gateway (broker/ssh) and (b) a real sshd
 * configured only by the files broker/openssh writes, with the real OpenSSH
 * `ssh` client as device and operator (the ssh2 client where OpenSSH cannot
 * present the certificate: fail/tampered). One ava test per case checks both
 * modes against the expected verdict; the last prints the case x mode table.
 *
 * Cases run a few at a time (each spawns one to four ssh clients): they use
 * disjoint port blocks, and each mode has its own world (CA, pool), so
 * nothing but CPU is shared. The sshd half needs Linux and root (sshd
 * switches to the tunnel/operator users, created if missing).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { chmod, mkdir as makeDir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_SSHD } from '../../testkit/sshd-check.js';
import { CASES } from '../../testkit/conformance/cases.js';
import { startEchoServer } from '../../testkit/conformance/client.js';
import { gatewayDriver, type EmbeddedConformanceGateway } from '../../testkit/conformance/gateway-driver.js';
import { sshdDriver, type SshdGateway } from '../../testkit/conformance/sshd-driver.js';
import { createWorld, formatMatrix, runCase, type ConformanceCase, type Gateway, type MatrixRow, type Row, type World } from '../../testkit/conformance/world.js';

const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);
/** Cases in flight at once, both modes together: enough to overlap the clients' waits, few enough for 2 cores. */
const CONCURRENCY = 6;
const BLOCKS_PER_WORLD = 64;

interface Mode {
  readonly name: string;
  readonly world: World;
  readonly gateway: Gateway;
  /** The server's recent log lines, for a failing row. */
  log(): string;
}

interface Fixture {
  readonly dir: string;
  readonly modes: readonly Mode[];
  readonly echo: { port: number; close(): Promise<void> };
  /** Per case, per mode: the row, once run. */
  readonly rows: ReadonlyMap<string, Readonly<Record<string, Promise<Row>>>>;
}

/** A tiny p-limit: runs at most N of the queued tasks at once. */
function limiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: Array<() => void> = [];
  return async (task) => {
    if (active >= n) await new Promise<void>((resolve) => waiting.push(resolve));
    active += 1;
    try {
      return await task();
    } finally {
      active -= 1;
      waiting.shift()?.();
    }
  };
}

async function runRow(c: ConformanceCase, mode: Mode, echoPort: number): Promise<Row> {
  try {
    return await runCase(c, mode.world, mode.gateway, echoPort);
  } catch (err) {
    // A broken control or a hung client: a failure of this row, not a verdict.
    return { name: c.name, expected: '', observed: 'error', pass: false, detail: (err as Error).message };
  }
}

let fixture: Fixture | undefined;

async function mkdir(path: string): Promise<string> {
  await makeDir(path, { recursive: true });
  return path;
}
let setupError: unknown;

test.before(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'certunnel-conformance-'));
  // sshd opens the principals files (in DIR/sshd/openssh) as the tunnel and operator users.
  await chmod(dir, 0o755);
  const modes: Mode[] = [];
  let echo: Fixture['echo'] | undefined;
  try {
    echo = await startEchoServer();
    // Two disjoint pools below the ephemeral range, away from the broker's
    // default 20000-29999; the gap leaves room for fail/port-outside-pool.
    const size = BLOCKS_PER_WORLD * 2;
    const base = 11000 + 2 * Math.floor((Math.random() * (8000 - 3 * size)) / 2);
    const gatewayWorld = await createWorld(await mkdir(join(dir, 'gateway')), { blocks: BLOCKS_PER_WORLD, first: base });
    const embedded: EmbeddedConformanceGateway = await gatewayDriver().start(gatewayWorld);
    modes.push({ name: embedded.name, world: gatewayWorld, gateway: embedded, log: () => embedded.log() });
    if (CAN_RUN_SSHD) {
      const sshdWorld = await createWorld(await mkdir(join(dir, 'sshd')), { blocks: BLOCKS_PER_WORLD, first: base + size + 16 });
      const sshd: SshdGateway = await sshdDriver().start(sshdWorld);
      modes.push({ name: sshd.name, world: sshdWorld, gateway: sshd, log: () => sshd.log() });
    }
    const limit = limiter(CONCURRENCY);
    const rows = new Map<string, Record<string, Promise<Row>>>();
    for (const c of CASES) {
      const byMode: Record<string, Promise<Row>> = {};
      for (const mode of modes) byMode[mode.name] = limit(() => runRow(c, mode, echo!.port));
      rows.set(c.name, byMode);
    }
    fixture = { dir, modes, echo, rows };
  } catch (err) {
    setupError = err;
    await Promise.all(modes.map((m) => m.gateway.stop()));
    await echo?.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test.after.always(async () => {
  if (!fixture) return;
  // Every row settles (runCase closes its clients) before the servers go.
  await Promise.all([...fixture.rows.values()].flatMap((byMode) => Object.values(byMode)));
  await Promise.all(fixture.modes.map((m) => m.gateway.stop()));
  await fixture.echo.close();
  await rm(fixture.dir, { recursive: true, force: true });
});

function ready(): Fixture {
  if (!fixture) throw new Error(`conformance setup failed: ${String(setupError)}`);
  return fixture;
}

for (const c of CASES) {
  test(`conformance ${c.name}`, async (t) => {
    const f = ready();
    for (const mode of f.modes) {
      const row = await f.rows.get(c.name)![mode.name]!;
      t.log(`${mode.name}: ${row.observed} - ${row.detail}`);
      t.true(row.pass, `${mode.name}: expected ${row.expected}, observed ${row.observed}: ${row.detail}\n${mode.log().split('\n').slice(-10).join('\n')}`);
    }
  });
}

test('conformance table: every case, both modes, the same verdicts but for documented differences', async (t) => {
  const f = ready();
  const matrix: MatrixRow[] = [];
  for (const c of CASES) {
    const byMode: Record<string, Row> = {};
    for (const mode of f.modes) byMode[mode.name] = await f.rows.get(c.name)![mode.name]!;
    matrix.push({ name: c.name, byMode });
  }
  const modeNames = CAN_RUN_SSHD ? f.modes.map((m) => m.name) : [...f.modes.map((m) => m.name), 'sshd'];
  t.log(`\n${formatMatrix(modeNames, matrix, CASES)}`);
  if (!CAN_RUN_SSHD) t.log('sshd not run: needs Linux, root and /usr/sbin/sshd');
  const failed = matrix.flatMap((r) => Object.entries(r.byMode).filter(([, row]) => !row!.pass).map(([mode]) => `${r.name} (${mode})`));
  t.deepEqual(failed, []);
  // Where the modes disagree, the case must say why (ConformanceCase.differences).
  const undocumented = matrix.filter((r) => {
    const verdicts = new Set(Object.values(r.byMode).map((row) => row!.observed.split(' ')[0]));
    return verdicts.size > 1 && !CASES.find((c) => c.name === r.name)?.differences;
  });
  t.deepEqual(undocumented.map((r) => r.name), []);
  t.is(matrix.length, CASES.length);
});
