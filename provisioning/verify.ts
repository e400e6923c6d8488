/**
 * `provision verify`: checks a flashed image before it ships. Each check
 * is ok, warn, fail or skip; the image passes when nothing failed. The
 * report lists them in this order, each from its own function below:
 *
 *   unit          the agent unit is in the image and not masked
 *   enabled       its .wants links exist and lead to it
 *   program       ExecStart's program exists in the image (warn)
 *   owner         the unit's user exists in the image (warn)
 *   agent-config  agent.json: regular file, accepted by the agent's parser, with URL and pin; with the unit's
 *                 --token-file: 0644 root's and NO enroll.token; without (an older unit): 0600 the agent user's, with it
 *   enroll-token  (the unit's --token-file) the token file: regular, 0600, root's (a LoadCredential= file) or the
 *                 agent user's, holding a token
 *   provisioning  provisioning.json readable and consistent with agent.json
 *   token-expiry  the token has not expired
 *   state-dir     exists, 0700, the agent user's, not enrolled (a cloned identity)
 *   broker        (online) the broker at the flashed URL presents the pinned TLS key; its keys match the flashed ones (warn)
 *   token-status  (with an API key) the broker lists the token as active (by the id in provisioning.json;
 *                 skipped when the image holds no token to enroll with)
 *
 * A check that the image's state makes meaningless is left out (no root, no
 * unit: nothing after it; no --token-file: no enroll-token), or skipped
 * with the reason.
 */
import type { Stats } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import { type ApiCall, type ApiClientOptions, ApiError, apiRequest, type ListTokensResponse, type TokenView } from '../api/index.js';
import { parseAgentConfig, type AgentConfig } from '../agent/config.js';
import { statePaths } from '../agent/state-dir.js';
import { DEFAULT_STATE_DIR, type BrokerCaResponse } from './bundle.js';
import { imageLayout, PROVISIONING_FORMAT, type ImageLayout, type PlacedFile, type ProvisioningRecord } from './flash.js';
import { resolveInRoot } from './image-root.js';
import { checkEnabled, findImageUnit, type ImageUnit } from './systemd-unit.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface VerifyCheck {
  readonly name: string;
  readonly status: CheckStatus;
  readonly detail: string;
}

export interface VerifyReport {
  readonly root: string;
  readonly ok: boolean;
  readonly checks: readonly VerifyCheck[];
}

/** The typed API client's shape (api/client.ts), so that tests can answer for the broker. */

export interface VerifyOptions {
  readonly root: string;
  /** Ask the broker (pin, keys, token status). Default true. */
  readonly online?: boolean;
  /** Reach the broker here instead of the flashed URL (still with the flashed pin). */
  readonly apiUrl?: string;
  /** A provisioner/admin key: also check that the token is still active. */
  readonly apiKey?: string;
  readonly now?: () => Date;
  readonly api?: ApiCall;
  readonly timeoutMs?: number;
}

export async function verifyImage(options: VerifyOptions): Promise<VerifyReport> {
  const { root } = options;
  const checks: VerifyCheck[] = [];
  const report = (): VerifyReport => ({ root, ok: !checks.some((c) => c.status === 'fail'), checks });
  if (!(await lstat(root).catch(() => null))?.isDirectory()) {
    checks.push(finding('root', 'fail', `${root} is not a directory`));
    return report();
  }
  const unit = await verifyUnit(root);
  checks.push(unit.check);
  if (!unit.found) return report();
  const { image, layout } = unit.found;
  checks.push(await verifyEnabled(root, image, layout), await verifyProgram(root, layout), verifyOwner(layout));
  const { check: configCheck, config } = await verifyAgentConfig(root, layout);
  checks.push(configCheck);
  const tokenFile = layout.token ? await verifyTokenFile(root, layout.token) : null;
  if (tokenFile) checks.push(tokenFile.check);
  const hasToken = tokenFile ? tokenFile.holdsToken : config?.enroll.token !== undefined;
  const { check: recordCheck, record } = await verifyProvisioning(root, layout, config);
  checks.push(recordCheck, verifyTokenExpiry(record, options.now ?? (() => new Date())));
  checks.push(await verifyStateDir(root, layout, config));
  const api = options.api ?? apiRequest;
  checks.push(await verifyBroker(options, api, config, record), await verifyTokenStatus(options, api, config, record, hasToken));
  return report();
}

const DEFAULT_TIMEOUT_MS = 10_000;

const finding = (name: string, status: CheckStatus, detail: string): VerifyCheck => ({ name, status, detail });

const modeOf = (mode: number): string => `0${(mode & 0o777).toString(8)}`;

/** What is wrong with the mode and owner of a file or directory, against WANT (and WHY that mode). */
function placementProblems(stats: Stats, want: Omit<PlacedFile, 'path'>, why?: string): string[] {
  const problems: string[] = [];
  if ((stats.mode & 0o777) !== want.mode) problems.push(`mode ${modeOf(stats.mode)} (want ${modeOf(want.mode)}${why ? `: ${why}` : ''})`);
  if (stats.uid !== want.owner.uid || stats.gid !== want.owner.gid) problems.push(`owner ${stats.uid}:${stats.gid} (want ${want.label})`);
  return problems;
}

/** fail with every problem found at PATH, or ok with the detail OK_DETAIL gives. */
function fromProblems(name: string, path: string, problems: readonly string[], okDetail: () => string): VerifyCheck {
  return problems.length ? finding(name, 'fail', `${path}: ${problems.join('; ')}`) : finding(name, 'ok', okDetail());
}

/** The unit, and from it where everything else is: without both, nothing else can be checked. */
async function verifyUnit(root: string): Promise<{ check: VerifyCheck; found?: { image: ImageUnit; layout: ImageLayout } }> {
  const image = await findImageUnit(root);
  if (!image) return { check: finding('unit', 'fail', 'certunnel-agent.service is not in the image') };
  let layout: ImageLayout;
  try {
    layout = await imageLayout(root, DEFAULT_STATE_DIR);
  } catch (err) {
    return { check: finding('unit', 'fail', (err as Error).message) };
  }
  return { check: finding('unit', 'ok', image.devicePath), found: { image, layout } };
}

async function verifyEnabled(root: string, image: ImageUnit, layout: ImageLayout): Promise<VerifyCheck> {
  const links = await checkEnabled(root, image, layout.unit.wantedBy);
  const bad = links.filter((l) => !l.ok);
  if (bad.length) return finding('enabled', 'fail', bad.map((l) => `${l.link}: ${l.why}`).join('; '));
  return finding('enabled', 'ok', links.map((l) => l.link).join(', '));
}

async function verifyProgram(root: string, layout: ImageLayout): Promise<VerifyCheck> {
  const { program } = layout.unit;
  const stats = await lstat(await resolveInRoot(root, program)).catch(() => null);
  return stats ? finding('program', 'ok', program) : finding('program', 'warn', `${program} is not in the image`);
}

function verifyOwner(layout: ImageLayout): VerifyCheck {
  const { owner } = layout;
  return finding('owner', owner.warning ? 'warn' : 'ok', owner.warning ?? owner.label);
}

/** agent.json, and the config in it when the agent's parser accepts it (the checks after this one use it). */
async function verifyAgentConfig(root: string, layout: ImageLayout): Promise<{ check: VerifyCheck; config: AgentConfig | null }> {
  const hostConfig = await resolveInRoot(root, layout.configPath);
  const stats = await lstat(hostConfig).catch(() => null);
  if (!stats?.isFile()) return { check: finding('agent-config', 'fail', `${layout.configPath} is missing or not a regular file`), config: null };
  const want = layout.config;
  const problems = placementProblems(stats, want, layout.token ? 'the agent must read it; it holds no secret' : 'it holds the token');
  let config: AgentConfig | null = null;
  try {
    config = parseAgentConfig(JSON.parse(await readFile(hostConfig, 'utf8')));
    if (!config.broker?.url) problems.push('no broker.url');
    if (config.broker?.url.startsWith('https:') && !config.broker.pin) problems.push('no broker.pin');
    if (layout.token && config.enroll.token) problems.push(`holds enroll.token, readable by all: the token belongs in ${layout.token.path} only`);
    if (!layout.token && !config.enroll.token) problems.push('no enroll.token');
  } catch (err) {
    problems.push((err as Error).message);
  }
  const check = fromProblems('agent-config', layout.configPath, problems,
    () => `${layout.configPath} (${modeOf(stats.mode)} ${want.label}${layout.token ? ', no token' : ''}), broker ${config!.broker!.url}`);
  return { check, config };
}

/** The unit's --token-file, and whether it holds something to enroll with. */
async function verifyTokenFile(root: string, want: PlacedFile): Promise<{ check: VerifyCheck; holdsToken: boolean }> {
  const hostToken = await resolveInRoot(root, want.path);
  const stats = await lstat(hostToken).catch(() => null);
  if (!stats?.isFile()) return { check: finding('enroll-token', 'fail', `${want.path} is missing or not a regular file`), holdsToken: false };
  const problems = placementProblems(stats, want, 'it holds the token');
  const token = (await readFile(hostToken, 'utf8')).trim();
  const holdsToken = !(token.length < 8 || token.length > 512 || /\s/.test(token));
  if (!holdsToken) problems.push(token === '' ? 'empty: no token to enroll with' : 'not a token');
  return { check: fromProblems('enroll-token', want.path, problems, () => `${want.path} (${modeOf(stats.mode)} ${want.label})`), holdsToken };
}

/** provisioning.json, and the record in it when it is one (the checks after this one use it). */
async function verifyProvisioning(root: string, layout: ImageLayout, config: AgentConfig | null): Promise<{ check: VerifyCheck; record: ProvisioningRecord | null }> {
  try {
    const record = JSON.parse(await readFile(await resolveInRoot(root, layout.provisioningPath), 'utf8')) as ProvisioningRecord;
    if (record.format !== PROVISIONING_FORMAT) throw new Error(`format ${String(record.format)}`);
    const same = !config?.broker || (record.broker.url === config.broker.url && (record.broker.pin ?? undefined) === config.broker.pin);
    const check = same
      ? finding('provisioning', 'ok', `batch ${record.batch} #${record.index}, token ${record.tokenId}`)
      : finding('provisioning', 'fail', 'provisioning.json and agent.json name different brokers or pins');
    return { check, record };
  } catch (err) {
    return { check: finding('provisioning', 'fail', `${layout.provisioningPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`), record: null };
  }
}

function verifyTokenExpiry(record: ProvisioningRecord | null, now: () => Date): VerifyCheck {
  if (!record) return finding('token-expiry', 'skip', 'no provisioning record');
  const left = Date.parse(record.expiresAt) - now().getTime();
  if (left > 0) return finding('token-expiry', 'ok', `expires ${record.expiresAt} (in ${Math.floor(left / 86_400_000)} days)`);
  return finding('token-expiry', 'fail', `expired at ${record.expiresAt}`);
}

async function verifyStateDir(root: string, layout: ImageLayout, config: AgentConfig | null): Promise<VerifyCheck> {
  const stateDir = layout.unit.stateDirOverride ?? config?.stateDir ?? DEFAULT_STATE_DIR;
  const hostState = await resolveInRoot(root, stateDir);
  const stats = await lstat(hostState).catch(() => null);
  if (!stats?.isDirectory()) return finding('state-dir', 'fail', `${stateDir} is missing`);
  const { owner } = layout;
  const problems = placementProblems(stats, { mode: 0o700, owner: owner.owner, label: owner.label });
  const paths = statePaths(hostState);
  for (const file of [paths.state, paths.key]) {
    if (await lstat(file).then(() => true, () => false)) problems.push(`already enrolled (${file.slice(hostState.length + 1)} present): images must ship without a device identity`);
  }
  return fromProblems('state-dir', stateDir, problems, () => `${stateDir} (0700 ${owner.label}, empty of identity)`);
}

/** The broker at the flashed URL (or --api) presents the flashed pin; its keys changed since flashing is only a warning. */
async function verifyBroker(options: VerifyOptions, api: ApiCall, config: AgentConfig | null, record: ProvisioningRecord | null): Promise<VerifyCheck> {
  if (options.online === false) return finding('broker', 'skip', '--offline');
  if (!config?.broker || !record) return finding('broker', 'skip', 'no usable agent config or provisioning record');
  const target: ApiClientOptions = { baseUrl: options.apiUrl ?? config.broker.url, pin: config.broker.pin, timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS };
  try {
    const ca = await api<BrokerCaResponse>(target, 'GET', '/v1/ca');
    const changed = (['hostKey', 'hostCertificateAuthority', 'userCertificateAuthority'] as const).filter((k) => ca[k].trim() !== record.broker[k].trim());
    // The agent takes the host key and CAs from its enrollment answer (over the pinned connection), not from
    // the image: a rotation since flashing is worth a note, not a refusal.
    if (changed.length) return finding('broker', 'warn', `${target.baseUrl} presents the pinned key, but its ${changed.join(', ')} changed since this image was flashed (a rotation?); the agent takes the current ones when it enrolls`);
    return finding('broker', 'ok', `${target.baseUrl} presents the pinned key ${config.broker.pin ?? '(no pin: system CAs)'}; host key and CAs match`);
  } catch (err) {
    const code = err instanceof ApiError ? err.code : 'ERROR';
    return finding('broker', 'fail', code === 'PIN_MISMATCH' ? `${target.baseUrl} does not present the pinned key ${config.broker.pin}` : `${target.baseUrl}: ${code}: ${(err as Error).message}`);
  }
}

/** With an API key: the broker still lists the image's token as active. */
async function verifyTokenStatus(options: VerifyOptions, api: ApiCall, config: AgentConfig | null, record: ProvisioningRecord | null, hasToken: boolean): Promise<VerifyCheck> {
  if (!options.apiKey || options.online === false || !record || !hasToken) {
    return finding('token-status', 'skip', !options.apiKey ? 'no API key (CERTUNNEL_API_KEY)' : hasToken ? 'offline or no record' : 'no token in the image');
  }
  try {
    const base: ApiClientOptions = {
      baseUrl: options.apiUrl ?? config?.broker?.url ?? record.broker.url, pin: config?.broker?.pin ?? record.broker.pin ?? undefined,
      apiKey: options.apiKey, timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    };
    const token = await findBatchToken(api, base, record.batch, record.tokenId);
    if (!token) return finding('token-status', 'fail', `the broker does not know token ${record.tokenId}`);
    return finding('token-status', token.status === 'active' ? 'ok' : 'fail', `token ${record.tokenId} is ${token.status}`);
  } catch (err) {
    return finding('token-status', 'fail', `${err instanceof ApiError ? err.code : 'ERROR'}: ${(err as Error).message}`);
  }
}

/** Token ID of BATCH as the broker lists it, page by page until found. */
async function findBatchToken(api: ApiCall, base: ApiClientOptions, batch: string, id: string): Promise<TokenView | undefined> {
  let found: TokenView | undefined;
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ batch, limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const page = await api<ListTokensResponse>(base, 'GET', `/v1/tokens?${q.toString()}`);
    found = page.items.find((t) => t.id === id);
    cursor = found ? null : page.nextCursor;
  } while (cursor);
  return found;
}
