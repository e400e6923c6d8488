/**
 * npm run bench:rotation: how long a rotation's steps take on a running
 * broker, with the embedded gateway and with a real sshd (OpenSSH mode,
 * reloaded by its pid file) — the same broker and machine, so the two SSH
 * servers compare. Each round rotates the host key and then the API TLS
 * key through the API (no devices: commit needs no --force) and times,
 * from the moment each request is sent:
 *
 *   learn      POST /v1/rotations → GET /v1/rotations/current says learn
 *              (host key: an Ed25519 key and certificate made; TLS: RSA-2048)
 *   commit     POST …/commit → the request has answered
 *   ssh served POST …/commit → a new SSH connection is offered the new host
 *              key (the embedded gateway switches in memory; OpenSSH mode
 *              writes the files, checks them with sshd -t and sends SIGHUP,
 *              and sshd re-executes itself)
 *   tls served POST …/commit → a new TLS handshake presents the new key
 *
 * The broker runs in this process (testkit/broker.ts), as the tests run it;
 * the probes are an SSH key exchange (ssh2 client, its host key captured)
 * and a TLS handshake, every few milliseconds.
 *
 * Usage: npm run bench:rotation [-- --rounds 10 --modes embedded,openssh --json]
 * Needs: OpenSSH mode also sshd and root (skipped otherwise).
 */
import { existsSync } from 'node:fs';
import { rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { Client } from 'ssh2';
import type { RotationResponse, RotationStatusResponse } from '../../api/index.js';
import { tlsPinOfSpki } from '../../ca/index.js';
import { withBroker, type TestBroker } from '../../testkit/broker.js';
import { startBrokerSshd } from '../../testkit/device-tunnel.js';
import { DEFAULT_SSHD } from '../../testkit/sshd-check.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { arg, formatStats, stats, type Stats } from './figures.js';

const ROUNDS = Number(arg('rounds') ?? 10);
const MODES = (arg('modes') ?? 'embedded,openssh').split(',') as Mode[];
const JSON_OUT = process.argv.includes('--json');
const DEADLINE_MS = 30_000;
const PROBE_EVERY_MS = 5;

type Mode = 'embedded' | 'openssh';
const CAN_RUN_SSHD = process.platform === 'linux' && process.getuid?.() === 0 && existsSync(DEFAULT_SSHD);

interface Round {
  /** Start → learn of the host-key rotation (an Ed25519 key and certificate made) and of the api-tls one (an RSA-2048 key and certificate). */
  readonly learnMs: number;
  readonly tlsLearnMs: number;
  readonly commitMs: number;
  readonly sshServedMs: number;
  readonly tlsServedMs: number;
}


function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** The base64 of the Ed25519 host key a new SSH connection to PORT is offered (ssh2 asks for the plain key). */
function offeredHostKey(port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const client = new Client();
    let seen: string | null = null;
    const done = (): void => {
      client.end();
      resolve(seen);
    };
    client.once('error', done);
    client.once('close', done);
    client.connect({
      host: '127.0.0.1', port, username: 'bench', readyTimeout: 5000,
      hostVerifier: (key: Buffer) => {
        // The blob is string "ssh-ed25519" + string key: the base64 of the whole blob is what key lines carry.
        seen = key.toString('base64');
        return false;
      },
    });
  });
}

function presentedPin(port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(tlsPinOfSpki(socket.getPeerCertificate().pubkey!));
      socket.destroy();
    });
    socket.once('error', () => resolve(null));
  });
}

/** Milliseconds from T0 until PROBE answers WANT. */
async function until(t0: number, probe: () => Promise<string | null>, want: string, label: string): Promise<number> {
  const deadline = t0 + DEADLINE_MS;
  for (;;) {
    if ((await probe()) === want) return performance.now() - t0;
    if (performance.now() > deadline) throw new Error(`${label}: not seen within ${DEADLINE_MS} ms`);
    await sleep(PROBE_EVERY_MS);
  }
}

/** Start → learn → commit of ROOT; returns the learn and commit times, the commit's start, and the next fingerprint. */
async function rotate(b: TestBroker, root: 'host-key' | 'api-tls', pin: string): Promise<{ learnMs: number; commitMs: number; committedAt: number; next: string }> {
  const admin = { ...b.admin, pin };
  const t0 = performance.now();
  const { rotation } = await b.call<RotationResponse>(admin, 'POST', '/v1/rotations', { root });
  await waitFor(async () => (await b.call<RotationStatusResponse>(admin, 'GET', '/v1/rotations/current')).rotation.phase === 'learn', `${root}: learn`, DEADLINE_MS);
  const learnMs = performance.now() - t0;
  const committedAt = performance.now();
  await b.call(admin, 'POST', '/v1/rotations/current/commit', {});
  return { learnMs, commitMs: performance.now() - committedAt, committedAt, next: rotation.next };
}

async function runMode(mode: Mode): Promise<Round[]> {
  const tag = `${process.pid}-${mode}`;
  const pidFile = join(tmpdir(), `certunnel-bench-rotation-${tag}.pid`);
  const sshdConfig = join(tmpdir(), `certunnel-bench-rotation-${tag}.conf`);
  const config = mode === 'openssh'
    ? { ssh: { mode: 'openssh', listen: '127.0.0.1:0', reconcileSeconds: 1, sshdPidFile: pidFile, sshdConfig } }
    : {};
  try {
    return await withBroker(async (b) => {
      const sshd = mode === 'openssh' ? await startBrokerSshd(b, [`PidFile ${pidFile}`]) : undefined;
      try {
        if (sshd) {
          await symlink(join(sshd.dir, 'sshd_config'), sshdConfig);
          await waitFor(() => existsSync(pidFile), 'sshd pid file', DEADLINE_MS);
        }
        const sshPort = sshd ? sshd.port : b.broker.sshPort;
        let pin = b.init.apiPin;
        const rounds: Round[] = [];
        for (let i = 0; i < ROUNDS; i++) {
          const hostKey = await rotate(b, 'host-key', pin);
          // The fingerprint is SHA256 of the blob; compare blobs through a fresh probe of what the API now names.
          const ca = await b.call<{ hostKey: string }>({ ...b.anonymous, pin }, 'GET', '/v1/ca');
          const blob = ca.hostKey.split(' ')[1]!;
          const sshServedMs = await until(hostKey.committedAt, () => offeredHostKey(sshPort), blob, `${mode}: the new host key served`);
          const tls = await rotate(b, 'api-tls', pin);
          const tlsServedMs = await until(tls.committedAt, () => presentedPin(b.broker.apiPort), tls.next, `${mode}: the new TLS key served`);
          pin = tls.next;
          rounds.push({ learnMs: hostKey.learnMs, tlsLearnMs: tls.learnMs, commitMs: (hostKey.commitMs + tls.commitMs) / 2, sshServedMs, tlsServedMs });
          log(`${mode} round ${i + 1}: learn ${hostKey.learnMs.toFixed(0)} ms, ssh served ${sshServedMs.toFixed(0)} ms, tls served ${tlsServedMs.toFixed(0)} ms`);
        }
        return rounds;
      } finally {
        await sshd?.stop();
      }
    }, { config });
  } finally {
    await rm(pidFile, { force: true });
    await rm(sshdConfig, { force: true });
  }
}

async function main(): Promise<void> {
  const results: Array<{ mode: Mode; rounds: number; learn: Stats; tlsLearn: Stats; commit: Stats; sshServed: Stats; tlsServed: Stats }> = [];
  for (const mode of MODES) {
    if (mode === 'openssh' && !CAN_RUN_SSHD) {
      log('openssh: skipped (needs root and sshd)');
      continue;
    }
    const rounds = await runMode(mode);
    results.push({
      mode, rounds: rounds.length, learn: stats(rounds.map((r) => r.learnMs)), tlsLearn: stats(rounds.map((r) => r.tlsLearnMs)), commit: stats(rounds.map((r) => r.commitMs)),
      sshServed: stats(rounds.map((r) => r.sshServedMs)), tlsServed: stats(rounds.map((r) => r.tlsServedMs)),
    });
  }
  if (JSON_OUT) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    return;
  }
  const ms = formatStats;
  process.stdout.write(`rotation steps, ms median/p90/max (${ROUNDS} rounds of host-key then api-tls)\n`);
  process.stdout.write(`${'mode'.padEnd(10)}${'key learn'.padStart(16)}${'tls learn'.padStart(16)}${'commit answer'.padStart(16)}${'ssh served'.padStart(16)}${'tls served'.padStart(16)}\n`);
  for (const r of results) {
    process.stdout.write(`${r.mode.padEnd(10)}${ms(r.learn).padStart(16)}${ms(r.tlsLearn).padStart(16)}${ms(r.commit).padStart(16)}${ms(r.sshServed).padStart(16)}${ms(r.tlsServed).padStart(16)}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`rotation-bench: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
