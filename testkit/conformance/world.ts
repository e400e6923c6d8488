/**
 * The transport-agnostic half of the conformance suite: CAs, a port pool,
 * identities signed with ca/, the gateway interface a driver implements, and
 * the runner that turns a case into a table row. A driver (sshd-driver.ts,
 * gateway-driver.ts) only has to start a gateway for a World and revoke on
 * demand; the cases and the client (the real `ssh`, client.ts) are shared.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { blockPorts } from '../../api/index.js';
import {
  formatCertificate,
  formatPublicKey,
  generateKeyPair,
  saveKeyPair,
  signDeviceCert,
  signHostCert,
  signOperatorCert,
  type KeyPair,
  type PortBlock,
} from '../../ca/index.js';
import { isListening, type ClientObservation, type SshIdentity, type SshTarget, type Stage, type Tunnel, type Verdict, openReverseTunnel } from './client.js';

export interface PoolSpec {
  readonly first: number;
  readonly last: number;
  readonly perDevice: number;
}

/** Keys and settings every gateway under test is built from. */
export interface World {
  readonly dir: string;
  readonly userCa: KeyPair;
  readonly hostCa: KeyPair;
  /** A CA no gateway trusts. */
  readonly otherCa: KeyPair;
  readonly pool: PoolSpec;
  /** Names the host certificate must carry: the client dials 127.0.0.1. */
  readonly hostnames: readonly string[];
  readonly knownHostsPath: string;
  /** A fresh serial, unique in this world (never 0). */
  nextSerial(): bigint;
  /** The next block of the pool whose ports are free on this host. */
  nextBlock(): Promise<PortBlock>;
}

/** A running gateway, as a driver hands it over. */
export interface Gateway {
  readonly name: string;
  readonly target: SshTarget;
  readonly deviceUser: string;
  readonly operatorUser: string;
  /** What the broker's revoke does: new logins with SERIALS fail, and live sessions holding BLOCKS end. */
  revoke(serials: readonly bigint[], blocks: readonly PortBlock[]): Promise<void>;
  stop(): Promise<void>;
}

export interface GatewayDriver {
  readonly name: string;
  start(world: World): Promise<Gateway>;
}

/**
 * Pool ports are real ports on this host. The pool is drawn below the
 * kernel's ephemeral range (32768+) and away from the broker's default pool
 * (20000-29999) that other tests use; blocks with a busy port are skipped.
 */
export async function createWorld(dir: string, options: { blocks?: number; perDevice?: number; first?: number } = {}): Promise<World> {
  const perDevice = options.perDevice ?? 2;
  const size = (options.blocks ?? 48) * perDevice;
  const first = options.first ?? 11000 + perDevice * Math.floor((Math.random() * (8000 - size)) / perDevice);
  const pool: PoolSpec = { first, last: first + size - 1, perDevice };
  const hostCa = generateKeyPair();
  const knownHostsPath = join(dir, 'known_hosts');
  await writeFile(knownHostsPath, `@cert-authority * ${formatPublicKey(hostCa.publicKey)}\n`);
  let serial = 1000n;
  let nextFirst = pool.first;
  return {
    dir,
    userCa: generateKeyPair(),
    hostCa,
    otherCa: generateKeyPair(),
    pool,
    hostnames: ['127.0.0.1', 'localhost'],
    knownHostsPath,
    nextSerial: () => ++serial,
    async nextBlock() {
      while (nextFirst + perDevice - 1 <= pool.last) {
        const block = { first: nextFirst, last: nextFirst + perDevice - 1 };
        nextFirst += perDevice;
        const busy = await Promise.all(blockPorts(block).map(isListening));
        if (!busy.some(Boolean)) return block;
      }
      throw new Error('test port pool exhausted');
    },
  };
}


export interface Identity extends SshIdentity {
  readonly serial: bigint;
  readonly block: PortBlock;
}

let keyCounter = 0;

async function saveIdentity(world: World, name: string, pair: KeyPair, certLine: string | undefined, serial: bigint, block: PortBlock): Promise<Identity> {
  const keyPath = join(world.dir, `${name}-${++keyCounter}`);
  await saveKeyPair(keyPath, pair);
  if (certLine === undefined) return { keyPath, serial, block };
  const certPath = `${keyPath}-cert.pub`;
  await writeFile(certPath, `${certLine}\n`);
  return { keyPath, certPath, serial, block };
}

export interface IssueOptions {
  /** Signing time; default now. */
  readonly now?: Date;
  readonly validitySeconds?: number;
  /** Default the world's user CA. */
  readonly ca?: KeyPair;
}

/** A device key and certificate (ca/'s signDeviceCert) for BLOCK. */
export async function issueDevice(world: World, block: PortBlock, options: IssueOptions = {}): Promise<Identity> {
  const pair = generateKeyPair();
  const serial = world.nextSerial();
  const cert = signDeviceCert({
    ca: options.ca ?? world.userCa,
    publicKey: pair.publicKey,
    deviceId: `dev${serial}`,
    ports: block,
    serial,
    now: options.now ?? new Date(),
    validitySeconds: options.validitySeconds ?? 3600,
  });
  return saveIdentity(world, 'device', pair, formatCertificate(cert), serial, block);
}

/** An operator key and certificate (reach-A-B) for the device that holds BLOCK. */
export async function issueOperator(world: World, block: PortBlock): Promise<Identity> {
  const pair = generateKeyPair();
  const serial = world.nextSerial();
  const cert = signOperatorCert({ ca: world.userCa, publicKey: pair.publicKey, operator: 'alice', deviceId: `dev${serial}`, ports: block, serial, now: new Date() });
  return saveIdentity(world, 'operator', pair, formatCertificate(cert), serial, block);
}

/** A host-type certificate, signed by the user CA, naming a device principal: the wrong type. */
export async function issueHostTypeCert(world: World, block: PortBlock): Promise<Identity> {
  const pair = generateKeyPair();
  const serial = world.nextSerial();
  const cert = signHostCert({ hostCa: world.userCa, publicKey: pair.publicKey, hostnames: [`ports-${block.first}-${block.last}`], serial, now: new Date() });
  return saveIdentity(world, 'hostcert', pair, formatCertificate(cert), serial, block);
}

/** A key with no certificate. */
export async function plainKey(world: World, block: PortBlock): Promise<Identity> {
  return saveIdentity(world, 'plain', generateKeyPair(), undefined, world.nextSerial(), block);
}

/** Per-case context: the world, the gateway, the device's local service, and cleanup. */
export interface CaseEnv {
  readonly world: World;
  readonly gateway: Gateway;
  readonly target: SshTarget;
  /** The echo server every device tunnel points at. */
  readonly echoPort: number;
  /** ssh -N -R for IDENTITY on its own block's first port (or FORWARDS); closed after the case. */
  tunnel(identity: Identity, user: string, forwards?: ReadonlyArray<{ bind: string; port: number }>): Promise<Tunnel>;
  /** A device with a live tunnel on its first port: what operators reach. */
  liveDevice(): Promise<{ identity: Identity; tunnel: Tunnel }>;
}

export interface Expectation {
  readonly verdict: Verdict;
  /** Where the refusal must happen; absent when either is acceptable. */
  readonly stage?: Stage;
}

export interface ConformanceCase<S = unknown> {
  readonly name: string;
  /** What DESIGN.md asks of every gateway. */
  readonly expect: Expectation;
  /** Gateways measured to differ from the design on purpose, with why. */
  readonly differences?: Readonly<Record<string, Expectation & { readonly why: string }>>;
  setup(env: CaseEnv): Promise<S>;
  run(env: CaseEnv, state: S): Promise<ClientObservation>;
}

/** Erases a case's state type so that cases with different states fit one table. */
export function defineCase<S>(c: ConformanceCase<S>): ConformanceCase {
  return { ...c, setup: (env) => c.setup(env), run: (env, state) => c.run(env, state as S) };
}

export interface Row {
  readonly name: string;
  readonly expected: string;
  readonly observed: string;
  readonly pass: boolean;
  readonly detail: string;
}

function show(e: { verdict: Verdict; stage?: Stage | undefined }): string {
  return e.stage ? `${e.verdict} (${e.stage})` : e.verdict;
}

export function expectationFor(c: ConformanceCase, gateway: string): Expectation {
  return c.differences?.[gateway] ?? c.expect;
}

/** Runs one case against GATEWAY; the row says whether the observation met the expectation. */
export async function runCase(c: ConformanceCase, world: World, gateway: Gateway, echoPort: number): Promise<Row> {
  const cleanups: Array<() => Promise<void>> = [];
  const env: CaseEnv = {
    world,
    gateway,
    target: gateway.target,
    echoPort,
    async tunnel(identity, user, forwards) {
      const t = await openReverseTunnel(gateway.target, identity, user, forwards ?? [{ bind: '127.0.0.1', port: identity.block.first }], echoPort);
      cleanups.push(() => t.close());
      return t;
    },
    async liveDevice() {
      const identity = await issueDevice(world, await world.nextBlock());
      const tunnel = await env.tunnel(identity, gateway.deviceUser);
      if (tunnel.observation.verdict !== 'ok') throw new Error(`control: device tunnel refused: ${tunnel.observation.detail}`);
      return { identity, tunnel };
    },
  };
  try {
    const state = await c.setup(env);
    const observed = await c.run(env, state);
    const expected = expectationFor(c, gateway.name);
    const pass = observed.verdict === expected.verdict && (expected.stage === undefined || expected.stage === observed.stage);
    const why = c.differences?.[gateway.name]?.why;
    return { name: c.name, expected: show(expected), observed: show(observed), pass, detail: why ? `${observed.detail} [${why}]` : observed.detail };
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup();
  }
}

export function formatTable(gateway: string, rows: readonly Row[]): string {
  const header: Row = { name: 'case', expected: 'expected', observed: `observed (${gateway})`, pass: true, detail: 'detail' };
  const all = [header, ...rows];
  const w = (key: 'name' | 'expected' | 'observed') => Math.max(...all.map((r) => r[key].length));
  const [wn, we, wo] = [w('name'), w('expected'), w('observed')];
  return all
    .map((r, i) => `${i === 0 ? '  ' : r.pass ? '✔ ' : '✘ '}${r.name.padEnd(wn)}  ${r.expected.padEnd(we)}  ${r.observed.padEnd(wo)}  ${r.detail}`)
    .join('\n');
}

/** The rows of one case in every mode that ran it, for formatMatrix. */
export interface MatrixRow {
  readonly name: string;
  readonly byMode: Readonly<Record<string, Row | undefined>>;
}

/**
 * One line per case, one column per mode: what the mode was expected to do
 * and what it did, ✔ or ✘ per cell; a documented difference shows its
 * expectation in the cell ("refused (request)≠ok").
 */
export function formatMatrix(modes: readonly string[], rows: readonly MatrixRow[], cases: readonly ConformanceCase[]): string {
  const byName = new Map(cases.map((c) => [c.name, c]));
  const cell = (row: MatrixRow, mode: string): string => {
    const r = row.byMode[mode];
    if (!r) return '- skipped';
    const c = byName.get(row.name);
    const differs = c?.differences?.[mode] !== undefined;
    return `${r.pass ? '✔' : '✘'} ${r.observed}${differs ? ' (known difference)' : ''}${!r.pass ? ` ≠ ${r.expected}` : ''}`;
  };
  const header = ['case', 'expected', ...modes];
  const lines = rows.map((row) => [row.name, designExpectation(byName.get(row.name)), ...modes.map((m) => cell(row, m))]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const table = [header, ...lines].map((l) => l.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd());
  const notes = cases.flatMap((c) =>
    Object.entries(c.differences ?? {})
      .filter(([mode]) => modes.includes(mode))
      .map(([mode, d]) => `known difference, ${c.name} (${mode}): ${show(d)}: ${d.why}`),
  );
  return [...table, ...(notes.length > 0 ? ['', ...notes] : [])].join('\n');
}

function designExpectation(c: ConformanceCase | undefined): string {
  return c ? show(c.expect) : '?';
}
