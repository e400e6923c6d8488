/**
 * `provision verify`: checks a flashed image before it ships. Each check
 * is ok, warn, fail or skip; the image passes when nothing failed.
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
 */
import { lstat, readFile } from 'node:fs/promises';
import { ApiError, apiRequest, type ApiClientOptions } from '../api/client.js';
import { parseAgentConfig } from '../agent/config.js';
import { statePaths } from '../agent/state-dir.js';
import { DEFAULT_STATE_DIR, type BrokerCaResponse } from './bundle.js';
import { resolveInRoot } from './image-root.js';
import { imageLayout, PROVISIONING_FORMAT, type ImageLayout, type ProvisioningRecord } from './flash.js';
import { checkEnabled, findImageUnit } from './systemd-unit.js';

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

export type ApiCall = <T>(options: ApiClientOptions, method: string, path: string, body?: unknown) => Promise<T>;

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

const modeOf = (mode: number): string => `0${(mode & 0o777).toString(8)}`;

export async function verifyImage(options: VerifyOptions): Promise<VerifyReport> {
  const { root } = options;
  const now = options.now ?? (() => new Date());
  const api = options.api ?? apiRequest;
  const checks: VerifyCheck[] = [];
  const add = (name: string, status: CheckStatus, detail: string): void => {
    checks.push({ name, status, detail });
  };
  const done = (): VerifyReport => ({ root, ok: !checks.some((c) => c.status === 'fail'), checks });

  if (!(await lstat(root).catch(() => null))?.isDirectory()) {
    add('root', 'fail', `${root} is not a directory`);
    return done();
  }

  // --- The unit, and from it where everything else is.
  const inImage = await findImageUnit(root);
  if (!inImage) {
    add('unit', 'fail', 'certunnel-agent.service is not in the image');
    return done();
  }
  let layout: ImageLayout;
  try {
    layout = await imageLayout(root, DEFAULT_STATE_DIR);
  } catch (err) {
    add('unit', 'fail', (err as Error).message);
    return done();
  }
  add('unit', 'ok', inImage.devicePath);
  const links = await checkEnabled(root, inImage, layout.unit.wantedBy);
  const bad = links.filter((l) => !l.ok);
  add('enabled', bad.length ? 'fail' : 'ok', bad.length ? bad.map((l) => `${l.link}: ${l.why}`).join('; ') : links.map((l) => l.link).join(', '));
  const program = await lstat(await resolveInRoot(root, layout.unit.program)).catch(() => null);
  add('program', program ? 'ok' : 'warn', program ? layout.unit.program : `${layout.unit.program} is not in the image`);
  const owner = layout.owner;
  add('owner', owner.warning ? 'warn' : 'ok', owner.warning ?? owner.label);

  // --- agent.json
  const hostConfig = await resolveInRoot(root, layout.configPath);
  let config: ReturnType<typeof parseAgentConfig> | null = null;
  const configStats = await lstat(hostConfig).catch(() => null);
  if (!configStats?.isFile()) {
    add('agent-config', 'fail', `${layout.configPath} is missing or not a regular file`);
  } else {
    const problems: string[] = [];
    const want = layout.config;
    if ((configStats.mode & 0o777) !== want.mode) {
      problems.push(`mode ${modeOf(configStats.mode)} (want ${modeOf(want.mode)}: ${layout.token ? 'the agent must read it; it holds no secret' : 'it holds the token'})`);
    }
    if (configStats.uid !== want.owner.uid || configStats.gid !== want.owner.gid) problems.push(`owner ${configStats.uid}:${configStats.gid} (want ${want.label})`);
    try {
      config = parseAgentConfig(JSON.parse(await readFile(hostConfig, 'utf8')));
      if (!config.broker?.url) problems.push('no broker.url');
      if (config.broker?.url.startsWith('https:') && !config.broker.pin) problems.push('no broker.pin');
      if (layout.token && config.enroll.token) problems.push(`holds enroll.token, readable by all: the token belongs in ${layout.token.path} only`);
      if (!layout.token && !config.enroll.token) problems.push('no enroll.token');
    } catch (err) {
      problems.push((err as Error).message);
    }
    add('agent-config', problems.length ? 'fail' : 'ok', problems.length ? `${layout.configPath}: ${problems.join('; ')}` : `${layout.configPath} (${modeOf(configStats.mode)} ${want.label}${layout.token ? ', no token' : ''}), broker ${config!.broker!.url}`);
  }

  // --- the token file
  let hasToken = config?.enroll.token !== undefined && !layout.token;
  if (layout.token) {
    const want = layout.token;
    const hostToken = await resolveInRoot(root, want.path);
    const stats = await lstat(hostToken).catch(() => null);
    if (!stats?.isFile()) {
      add('enroll-token', 'fail', `${want.path} is missing or not a regular file`);
    } else {
      const problems: string[] = [];
      if ((stats.mode & 0o777) !== want.mode) problems.push(`mode ${modeOf(stats.mode)} (want ${modeOf(want.mode)}: it holds the token)`);
      if (stats.uid !== want.owner.uid || stats.gid !== want.owner.gid) problems.push(`owner ${stats.uid}:${stats.gid} (want ${want.label})`);
      const token = (await readFile(hostToken, 'utf8')).trim();
      if (token.length < 8 || token.length > 512 || /\s/.test(token)) problems.push(token === '' ? 'empty: no token to enroll with' : 'not a token');
      else hasToken = true;
      add('enroll-token', problems.length ? 'fail' : 'ok', problems.length ? `${want.path}: ${problems.join('; ')}` : `${want.path} (${modeOf(stats.mode)} ${want.label})`);
    }
  }

  // --- provisioning.json
  let record: ProvisioningRecord | null = null;
  try {
    record = JSON.parse(await readFile(await resolveInRoot(root, layout.provisioningPath), 'utf8')) as ProvisioningRecord;
    if (record.format !== PROVISIONING_FORMAT) throw new Error(`format ${String(record.format)}`);
    const same = !config?.broker || (record.broker.url === config.broker.url && (record.broker.pin ?? undefined) === config.broker.pin);
    add('provisioning', same ? 'ok' : 'fail', same ? `batch ${record.batch} #${record.index}, token ${record.tokenId}` : 'provisioning.json and agent.json name different brokers or pins');
  } catch (err) {
    add('provisioning', 'fail', `${layout.provisioningPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    record = null;
  }

  if (record) {
    const left = Date.parse(record.expiresAt) - now().getTime();
    add('token-expiry', left > 0 ? 'ok' : 'fail', left > 0 ? `expires ${record.expiresAt} (in ${Math.floor(left / 86_400_000)} days)` : `expired at ${record.expiresAt}`);
  } else {
    add('token-expiry', 'skip', 'no provisioning record');
  }

  // --- the state directory
  const stateDir = layout.unit.stateDirOverride ?? config?.stateDir ?? DEFAULT_STATE_DIR;
  const hostState = await resolveInRoot(root, stateDir);
  const stateStats = await lstat(hostState).catch(() => null);
  if (!stateStats?.isDirectory()) {
    add('state-dir', 'fail', `${stateDir} is missing`);
  } else {
    const problems: string[] = [];
    if ((stateStats.mode & 0o777) !== 0o700) problems.push(`mode ${modeOf(stateStats.mode)} (want 0700)`);
    if (stateStats.uid !== owner.owner.uid || stateStats.gid !== owner.owner.gid) problems.push(`owner ${stateStats.uid}:${stateStats.gid} (want ${owner.label})`);
    const paths = statePaths(hostState);
    for (const file of [paths.state, paths.key]) {
      if (await lstat(file).then(() => true, () => false)) problems.push(`already enrolled (${file.slice(hostState.length + 1)} present): images must ship without a device identity`);
    }
    add('state-dir', problems.length ? 'fail' : 'ok', problems.length ? `${stateDir}: ${problems.join('; ')}` : `${stateDir} (0700 ${owner.label}, empty of identity)`);
  }

  // --- the broker
  if (options.online === false) {
    add('broker', 'skip', '--offline');
  } else if (!config?.broker || !record) {
    add('broker', 'skip', 'no usable agent config or provisioning record');
  } else {
    const target: ApiClientOptions = { baseUrl: options.apiUrl ?? config.broker.url, pin: config.broker.pin, timeoutMs: options.timeoutMs ?? 10_000 };
    try {
      const ca = await api<BrokerCaResponse>(target, 'GET', '/v1/ca');
      const changed = (['hostKey', 'hostCertificateAuthority', 'userCertificateAuthority'] as const).filter((k) => ca[k].trim() !== record!.broker[k].trim());
      // The agent takes the host key and CAs from its enrollment answer (over the pinned connection), not from
      // the image: a rotation since flashing is worth a note, not a refusal.
      if (changed.length) add('broker', 'warn', `${target.baseUrl} presents the pinned key, but its ${changed.join(', ')} changed since this image was flashed (a rotation?); the agent takes the current ones when it enrolls`);
      else add('broker', 'ok', `${target.baseUrl} presents the pinned key ${config.broker.pin ?? '(no pin: system CAs)'}; host key and CAs match`);
    } catch (err) {
      const code = err instanceof ApiError ? err.code : 'ERROR';
      add('broker', 'fail', code === 'PIN_MISMATCH' ? `${target.baseUrl} does not present the pinned key ${config.broker.pin}` : `${target.baseUrl}: ${code}: ${(err as Error).message}`);
    }
  }
  if (!options.apiKey || options.online === false || !record || !hasToken) {
    add('token-status', 'skip', !options.apiKey ? 'no API key (CERTUNNEL_API_KEY)' : hasToken ? 'offline or no record' : 'no token in the image');
  } else {
    try {
      const base: ApiClientOptions = { baseUrl: options.apiUrl ?? config?.broker?.url ?? record.broker.url, pin: config?.broker?.pin ?? record.broker.pin ?? undefined, apiKey: options.apiKey, timeoutMs: options.timeoutMs ?? 10_000 };
      let found: { status: string } | undefined;
      let cursor: string | null = null;
      do {
        const q = new URLSearchParams({ batch: record.batch, limit: '1000' });
        if (cursor) q.set('cursor', cursor);
        const page: { items: Array<{ id: string; status: string }>; nextCursor: string | null } = await api(base, 'GET', `/v1/tokens?${q.toString()}`);
        found = page.items.find((t) => t.id === record!.tokenId);
        cursor = found ? null : page.nextCursor;
      } while (cursor);
      if (!found) add('token-status', 'fail', `the broker does not know token ${record.tokenId}`);
      else add('token-status', found.status === 'active' ? 'ok' : 'fail', `token ${record.tokenId} is ${found.status}`);
    } catch (err) {
      add('token-status', 'fail', `${err instanceof ApiError ? err.code : 'ERROR'}: ${(err as Error).message}`);
    }
  }
  return done();
}
