/**
 * Enrollment: the device makes its Ed25519 key here (the private half is
 * written 0600 and never leaves the device), redeems its single-use token
 * with the public half, and stores what the broker grants: certificate,
 * port block, SSH endpoint, the broker's host key and host CA, and its trust
 * set (trust-set.ts). The request says what the agent can do
 * (capabilities.ts).
 *
 * The new key is written as device_key.pending before the request and moved
 * into place only after the broker accepted it, so a refused `--force`
 * re-enrollment leaves the old, working enrollment untouched.
 *
 * A lost answer does not lose the token: when the request fails for any
 * reason but a refusal (timeout, broker unreachable, power cut), the pending
 * key stays, and the next attempt presents the same key with the same token,
 * which the broker answers with the same device (tokens.enrollRetrySeconds).
 * A key moved into place whose grant was never written is reused alike.
 */
import { readFile, rename, unlink } from 'node:fs/promises';
import { decodePrivateKey, encodePrivateKey, formatPublicKey, generateKeyPair, writeFileAtomic, type KeyPair } from '../ca/index.js';
import { type ApiCall, ApiError, apiRequest, type EnrollRequest, type EnrollResponse } from '../api/index.js';
import { AgentError, ENROLL_FATAL_CODES, EXIT } from './errors.js';
import { callWithCapabilities } from './capabilities.js';
import type { AgentLogger } from './logger.js';
import { checkGrant, ensureStateDir, isEnrolled, loadEnrollment, runningAgentPid, writeGrant, type BrokerApiRef, type Enrollment } from './state-dir.js';
import { trustOfGrant } from './trust-set.js';

export interface EnrollOptions {
  readonly stateDir: string;
  readonly broker: BrokerApiRef;
  readonly token: string;
  readonly name?: string;
  readonly hardwareSerial?: string;
  /** Replace an existing enrollment (only once the new one succeeded). */
  readonly force?: boolean;
  readonly timeoutMs?: number;
  readonly now?: () => Date;
  readonly api?: ApiCall;
  /** Told about a malformed trust set in the grant (the enrollment goes on with `ssh`'s key and CA alone). */
  readonly log?: AgentLogger;
}

/** The key in PATH, or null when there is none (or it cannot be read: then a new one is made). */
async function readKey(path: string): Promise<KeyPair | null> {
  try {
    return decodePrivateKey(await readFile(path));
  } catch {
    return null;
  }
}

/**
 * Enrolls once. Throws AgentError: ALREADY_ENROLLED, ALREADY_RUNNING,
 * GRANT_INVALID, a refusal for good with its broker code and exit status
 * REFUSED (TOKEN_USED, …: ENROLL_FATAL_CODES), or any other ApiError's code
 * with status ERROR (UNREACHABLE, PIN_MISMATCH, TIMEOUT, STORE_BUSY, …).
 */
export async function enrollDevice(options: EnrollOptions): Promise<Enrollment> {
  const paths = await ensureStateDir(options.stateDir);
  if (await isEnrolled(options.stateDir)) {
    if (!options.force) {
      throw new AgentError('ALREADY_ENROLLED', `${options.stateDir} is already enrolled; use --force to replace that enrollment`, EXIT.ERROR);
    }
    const running = await runningAgentPid(paths);
    if (running !== null) throw new AgentError('ALREADY_RUNNING', `stop the agent (pid ${running}) before re-enrolling`, EXIT.ERROR);
  }
  const now = options.now ?? (() => new Date());
  const api = options.api ?? apiRequest;
  const pending = `${paths.key}.pending`;
  const fromPending = await readKey(pending);
  // Not enrolled yet, a key in place is an interrupted enrollment's (with --force it is the working one's).
  const fromKey = fromPending || options.force ? null : await readKey(paths.key);
  const key = fromPending ?? fromKey ?? generateKeyPair();
  if (!fromPending) await writeFileAtomic(pending, encodePrivateKey(key, { comment: 'certunnel device key' }), { mode: 0o600 });
  let grant: EnrollResponse;
  try {
    const body: EnrollRequest = { token: options.token, publicKey: formatPublicKey(key.publicKey) };
    if (options.name) body.name = options.name;
    if (options.hardwareSerial) body.hardwareSerial = options.hardwareSerial;
    const call = { baseUrl: options.broker.url, pin: options.broker.pin, timeoutMs: options.timeoutMs ?? 30_000 };
    grant = await callWithCapabilities<EnrollResponse>(api, call, 'POST', '/v1/enroll', body);
    checkGrant(grant, key.publicKey);
  } catch (err) {
    const fatal = err instanceof ApiError && ENROLL_FATAL_CODES.includes(err.code);
    // Kept for a retry only when the broker may have answered with no one to hear it.
    if (fatal || !(err instanceof ApiError)) await unlink(pending).catch(() => undefined);
    if (err instanceof ApiError) {
      throw new AgentError(err.code, `enrollment ${fatal ? 'refused' : 'failed'}: ${err.message}`, fatal ? EXIT.REFUSED : EXIT.ERROR);
    }
    throw err;
  }
  await rename(pending, paths.key);
  await writeFileAtomic(paths.publicKey, `${formatPublicKey(key.publicKey, `certunnel device ${grant.deviceId}`)}\n`, { mode: 0o644 });
  const at = now().toISOString();
  const trust = trustOfGrant(grant, undefined);
  if (trust.refused) options.log?.warn({ event: 'trust_refused', code: trust.refused.code, message: trust.refused.message }, 'the broker sent a malformed trust set; trusting its ssh host key and host CA alone');
  await writeGrant(paths, grant, options.broker, { enrolledAt: at, renewedAt: null, trust: trust.trust });
  const enrollment = await loadEnrollment(options.stateDir);
  if (!enrollment) throw new AgentError('STATE_INVALID', `${options.stateDir}: enrollment was written but cannot be read back`);
  return enrollment;
}
