/**
 * `provision flash`: writes one device bundle into a device image's root
 * filesystem (mounted at ROOT). Paths are the device's own; nothing is
 * rewritten for the mount point, so the image boots as written:
 *
 *   /etc/certunnel/agent.json          0644 root         the bundle's agent config WITHOUT the token (no secret)
 *   /etc/certunnel/enroll-token        0600 root         the single-use enrollment token (the unit's LoadCredential=)
 *   /etc/certunnel/provisioning.json   0644 root         batch, token id, expiry, the broker's keys and pin (no secret)
 *   /var/lib/certunnel/                0700 agent user   the state directory, empty
 *   /etc/systemd/system/certunnel-agent.service          installed unless the image has the unit already
 *   /etc/systemd/system/<WantedBy>.wants/certunnel-agent.service -> the unit   (enabled)
 *
 * The agent config path and the state directory follow the unit's
 * ExecStart (--config, --state-dir) when it names them; the token file its
 * --token-file: ${CREDENTIALS_DIRECTORY}/ID with LoadCredential=ID:PATH
 * (systemd, as root, copies PATH into the agent's private credentials
 * directory: PATH stays root's 0600 whatever uid the agent gets), or a
 * literal path the agent reads itself (then 0600 the agent user's). A unit
 * with no --token-file (an older unit already in the image) gets the token
 * in agent.json, 0600 the agent user's. To run an agent from a mounted
 * image on this machine (tests, the demo), as the unit would:
 *   certunnel agent run --config ROOT/etc/certunnel/agent.json --state-dir ROOT/var/lib/certunnel \
 *     --token-file ROOT/etc/certunnel/enroll-token
 *
 * The agent user: the unit's User=, or with DynamicUser= and no User= the
 * unit's name (certunnel-agent), looked up in the IMAGE's /etc/passwd
 * (Group= in its /etc/group), never this machine's. systemd runs a
 * DynamicUser= unit as a static user of that name when there is one. With
 * no such user: a User= unit would not start (files are owned by root, and
 * a warning says so); a DynamicUser= unit gets a uid only when it starts,
 * so the state directory stays root's 0700 (at the first start systemd moves
 * it to /var/lib/private/ and gives it to that uid: StateDirectory=), and
 * no file the agent itself must read can hold the token: flash refuses a
 * unit that would need one (the token is never made readable by all).
 */
import { lstat, readFile } from 'node:fs/promises';
import { dirname, posix } from 'node:path';
import { statePaths } from '../agent/state-dir.js';
import { DEFAULT_STATE_DIR, type DeviceBundle } from './bundle.js';
import { ProvisionError } from './errors.js';
import { ensureDir, isRoot, resolveInRoot, ROOT_OWNER, writeOwnedFile, type Owner } from './image-root.js';
import { lookupImageGroup, lookupImageGroupName, lookupImageUser } from './image-users.js';
import { enableUnit, findImageUnit, findRepoUnit, parseAgentUnit, readUnitFile, UNIT_NAME, type AgentUnit } from './systemd-unit.js';

export const PROVISIONING_FORMAT = 'certunnel-provisioning/1';

/** provisioning.json: what verify checks the image against. No secret. */
export interface ProvisioningRecord {
  readonly format: typeof PROVISIONING_FORMAT;
  readonly batch: string;
  readonly index: number;
  readonly tokenId: string;
  readonly expiresAt: string;
  readonly bindName: string | null;
  readonly bindSerial: string | null;
  readonly broker: DeviceBundle['broker'];
  readonly configPath: string;
  readonly stateDir: string;
  readonly flashedAt: string;
}

export interface AgentOwner {
  readonly owner: Owner;
  /** "certunnel-agent(998):certunnel-agent(998)" */
  readonly label: string;
  /** A dynamic user with no static user of its name in the image: no file can be given to it in advance. */
  readonly dynamic: boolean;
  readonly warning: string | null;
}

/** A file flash writes, as on the device, with its mode and owner. */
export interface PlacedFile {
  readonly path: string;
  readonly mode: number;
  readonly owner: Owner;
  readonly label: string;
}

/** The user systemd runs the agent as: User=, or with DynamicUser= and no User=, the unit's name. */
export function agentUserName(unit: AgentUnit): string | null {
  if (unit.user !== null) return unit.user;
  return unit.dynamicUser ? UNIT_NAME.replace(/\.service$/, '') : null;
}

/**
 * Who owns the agent's files in ROOT. The unit's user as the IMAGE defines
 * it (its /etc/passwd and /etc/group). With DynamicUser=, systemd uses a
 * static user of that name when the image has one; otherwise it picks a
 * uid at each start, which no file can be given in advance: agent.json is
 * then made readable by all (0644) — the one choice with which the agent
 * can read its config — and flash says what that costs.
 */
export async function resolveAgentOwner(root: string, unit: AgentUnit): Promise<AgentOwner> {
  const name = agentUserName(unit);
  const asRoot = { owner: ROOT_OWNER, label: 'root(0):root(0)', dynamic: false };
  if (name === null) return { ...asRoot, warning: null };
  const user = await lookupImageUser(root, name);
  if (!user && unit.dynamicUser) {
    // Fine when systemd hands the agent the token (LoadCredential=); imageLayout refuses otherwise.
    return { ...asRoot, label: `dynamic user ${name} (root(0):root(0) until the first start)`, dynamic: true, warning: null };
  }
  if (!user) {
    return { ...asRoot, warning: `user ${name} (the unit's User=) is not in the image's /etc/passwd: files are owned by root; create the user in the image, or systemd will not start the agent` };
  }
  const groupName = unit.group ?? name;
  const gid = unit.group ? await lookupImageGroup(root, unit.group) : user.gid;
  if (gid === null) {
    return { owner: user, label: `${name}(${user.uid}):(${user.gid})`, dynamic: false, warning: `group ${unit.group} (the unit's Group=) is not in the image's /etc/group: using the user's primary group ${user.gid}` };
  }
  const group = unit.group ? groupName : ((await lookupImageGroupName(root, gid)) ?? '');
  return { owner: { uid: user.uid, gid }, label: `${name}(${user.uid}):${group}(${gid})`, dynamic: false, warning: null };
}

export interface ImageLayout {
  readonly unit: AgentUnit;
  /** Where the unit is (or will be) in the image, as on the device. */
  readonly unitDevicePath: string;
  /** The unit is not in the image yet; flash installs this text. */
  readonly installUnit: boolean;
  readonly configPath: string;
  readonly provisioningPath: string;
  readonly stateDir: string;
  readonly owner: AgentOwner;
  /** agent.json: 0644 root's when the token is in its own file, else 0600 the agent user's (it holds the token). */
  readonly config: PlacedFile;
  /** The token's own file (0600: root's for a credential, else the agent user's), or null: the token stays in agent.json. */
  readonly token: PlacedFile | null;
}

const ROOT_LABEL = 'root(0):root(0)';

/** What a flash would write where, from the image's unit (or the one given / shipped in scripts/systemd/). */
export async function imageLayout(root: string, stateDirFromConfig: string, unitSource?: string): Promise<ImageLayout> {
  const inImage = await findImageUnit(root);
  if (inImage?.masked) throw new ProvisionError('UNIT_INVALID', `${UNIT_NAME} is masked in the image (${inImage.devicePath} -> /dev/null)`);
  let unit: AgentUnit;
  if (inImage) {
    unit = parseAgentUnit(await readFile(inImage.hostPath, 'utf8'), inImage.devicePath);
  } else {
    const source = unitSource ?? (await findRepoUnit());
    if (!source) throw new ProvisionError('UNIT_MISSING', `the image has no ${UNIT_NAME} and none was found in scripts/systemd/; give --unit FILE`);
    unit = await readUnitFile(source);
  }
  const owner = await resolveAgentOwner(root, unit);
  const agentFile = (path: string): PlacedFile => {
    if (owner.dynamic) {
      throw new ProvisionError('UNIT_INVALID', `${unit.tokenFile ? '--token-file ' + path : 'agent.json (the unit passes no --token-file)'} would hold the token for a dynamic user (DynamicUser=yes, no user ${agentUserName(unit)} in the image), ` +
        `which only a file readable by all could reach; use the shipped unit (LoadCredential=enroll-token:…, --token-file \${CREDENTIALS_DIRECTORY}/enroll-token) or add that system user to the image`);
    }
    return { path, mode: 0o600, owner: owner.owner, label: owner.label };
  };
  let token: PlacedFile | null = null;
  let config: PlacedFile;
  if (unit.tokenFile) {
    token = unit.tokenFile.credential ? { path: unit.tokenFile.path, mode: 0o600, owner: ROOT_OWNER, label: ROOT_LABEL } : agentFile(unit.tokenFile.path);
    config = { path: unit.configPath, mode: 0o644, owner: ROOT_OWNER, label: ROOT_LABEL };
  } else {
    config = agentFile(unit.configPath);
  }
  return {
    unit,
    unitDevicePath: inImage?.devicePath ?? `/etc/systemd/system/${UNIT_NAME}`,
    installUnit: !inImage,
    configPath: unit.configPath,
    provisioningPath: posix.join(posix.dirname(unit.configPath), 'provisioning.json'),
    stateDir: unit.stateDirOverride ?? stateDirFromConfig,
    owner,
    config,
    token,
  };
}

export interface FlashOptions {
  readonly root: string;
  readonly bundle: DeviceBundle;
  /** The unit to install when the image has none (default: scripts/systemd/certunnel-agent.service). */
  readonly unitSource?: string;
  /** Replace another bundle's config (a device that is not enrolled yet). */
  readonly force?: boolean;
  /** The board's hardware serial: refused unless the bundle's token is bound to it. */
  readonly expectSerial?: string;
  readonly now?: () => Date;
}

export interface FlashedFile {
  readonly path: string;
  readonly mode: string;
  readonly owner: string;
  readonly note?: string;
}

export interface FlashReport {
  readonly root: string;
  readonly batch: string;
  readonly index: number;
  readonly tokenId: string;
  readonly expiresAt: string;
  readonly files: readonly FlashedFile[];
  readonly warnings: readonly string[];
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(() => true, () => false);
}

/** The agent config to write and, when the token has its own file, the token (with a newline) taken out of it. */
export function splitToken(agent: DeviceBundle['agent'], ownFile: boolean): { token: string | null; agentText: string } {
  if (!ownFile) return { token: null, agentText: `${JSON.stringify(agent, null, 2)}\n` };
  const enroll = (agent.enroll ?? {}) as Record<string, unknown>;
  const { token, ...rest } = enroll;
  if (typeof token !== 'string' || token === '') throw new ProvisionError('BUNDLE_INVALID', 'the bundle\'s agent config has no enroll.token');
  return { token: `${token}\n`, agentText: `${JSON.stringify({ ...agent, enroll: rest }, null, 2)}\n` };
}

/**
 * Refuses, before writing anything, a bundle that does not fit and an image
 * that holds a device identity or (without --force) another bundle; then writes.
 */
export async function flashImage(options: FlashOptions): Promise<FlashReport> {
  const { root, bundle } = options;
  const now = options.now ?? (() => new Date());
  await refuseUnfitRootOrBundle(options, now());
  const layout = await imageLayout(root, (bundle.agent.stateDir as string | undefined) ?? DEFAULT_STATE_DIR, options.unitSource);
  const hosts = await hostPathsOf(root, layout);
  await refuseEnrolledImage(layout, hosts);
  const content = splitToken(bundle.agent, layout.token !== null);
  if (!options.force) await refuseOtherBundle(hosts, content);
  const record: ProvisioningRecord = {
    format: PROVISIONING_FORMAT, batch: bundle.batch, index: bundle.index, tokenId: bundle.tokenId, expiresAt: bundle.expiresAt,
    bindName: bundle.bindName, bindSerial: bundle.bindSerial, broker: bundle.broker,
    configPath: layout.configPath, stateDir: layout.stateDir, flashedAt: now().toISOString(),
  };
  const files = await writeImageFiles(root, layout, hosts, { ...content, record });
  return { root, batch: bundle.batch, index: bundle.index, tokenId: bundle.tokenId, expiresAt: bundle.expiresAt, files, warnings: await flashWarnings(root, layout) };
}

/** Where flash writes, as paths on this machine (resolved inside ROOT). */
interface HostPaths {
  readonly config: string;
  readonly token: string | null;
  readonly record: string;
  readonly state: string;
}

async function hostPathsOf(root: string, layout: ImageLayout): Promise<HostPaths> {
  return {
    config: await resolveInRoot(root, layout.configPath),
    token: layout.token ? await resolveInRoot(root, layout.token.path) : null,
    record: await resolveInRoot(root, layout.provisioningPath),
    state: await resolveInRoot(root, layout.stateDir),
  };
}

/** No root directory, a board the bundle is not bound to, or an expired token: nothing is written. */
async function refuseUnfitRootOrBundle(options: FlashOptions, now: Date): Promise<void> {
  const { root, bundle } = options;
  const rootStats = await lstat(root).catch(() => null);
  if (!rootStats?.isDirectory()) throw new ProvisionError('IMAGE_INVALID', `${root} is not a directory (mount the image's root filesystem there)`);
  if (options.expectSerial !== undefined && bundle.bindSerial !== options.expectSerial) {
    throw new ProvisionError('SERIAL_MISMATCH', `the bundle (${bundle.batch} #${bundle.index}) is bound to ${bundle.bindSerial ?? 'no serial'}, not ${options.expectSerial}`);
  }
  if (Date.parse(bundle.expiresAt) <= now.getTime()) {
    throw new ProvisionError('BUNDLE_INVALID', `the bundle's token ${bundle.tokenId} expired at ${bundle.expiresAt}`);
  }
}

/** Never flash over a device identity: a cloned image would share it. */
async function refuseEnrolledImage(layout: ImageLayout, hosts: HostPaths): Promise<void> {
  const state = statePaths(hosts.state);
  if ((await exists(state.state)) || (await exists(state.key))) {
    throw new ProvisionError('IMAGE_ENROLLED', `${layout.stateDir} in the image already holds an enrollment; clear it first (flash never deletes device state)`);
  }
}

/** Another bundle's config or token already in the image is replaced only with --force. */
async function refuseOtherBundle(hosts: HostPaths, content: { token: string | null; agentText: string }): Promise<void> {
  const previous = await readFile(hosts.config, 'utf8').catch(() => null);
  const previousToken = hosts.token ? await readFile(hosts.token, 'utf8').catch(() => null) : null;
  const other = (previous !== null && previous !== content.agentText) || (previousToken !== null && previousToken.trim() !== '' && previousToken !== content.token);
  if (!other) return;
  const record = await readFile(hosts.record, 'utf8').then((t) => JSON.parse(t) as Partial<ProvisioningRecord>, () => null);
  throw new ProvisionError('IMAGE_FLASHED', `the image already holds another agent config${record?.tokenId ? ` (token ${record.tokenId}, batch ${record.batch} #${record.index})` : ''}; --force replaces it`);
}

/** Writes the token, agent.json, provisioning.json, the state directory and the unit with its links; lists them as on the device. */
async function writeImageFiles(
  root: string, layout: ImageLayout, hosts: HostPaths, content: { token: string | null; agentText: string; record: ProvisioningRecord },
): Promise<FlashedFile[]> {
  const files: FlashedFile[] = [];
  const rootLabel = isRoot() ? ROOT_LABEL : `(${process.getuid?.()}):(${process.getgid?.()}), not root`;
  const labelOf = (f: PlacedFile): string => (f.owner === ROOT_OWNER ? rootLabel : f.label);
  // The token first: agent.json never names a config without its token file in place.
  if (layout.token && hosts.token) {
    await ensureDir(dirname(hosts.token), 0o755, ROOT_OWNER);
    await writeOwnedFile(hosts.token, content.token!, layout.token.mode, layout.token.owner);
    files.push({ path: layout.token.path, mode: `0${layout.token.mode.toString(8)}`, owner: labelOf(layout.token), note: 'the enrollment token' });
  }
  await ensureDir(dirname(hosts.config), 0o755, ROOT_OWNER);
  await writeOwnedFile(hosts.config, content.agentText, layout.config.mode, layout.config.owner);
  files.push({ path: layout.configPath, mode: `0${layout.config.mode.toString(8)}`, owner: labelOf(layout.config), note: layout.token ? 'no token' : 'holds the token' });
  await ensureDir(dirname(hosts.record), 0o755, ROOT_OWNER);
  await writeOwnedFile(hosts.record, `${JSON.stringify(content.record, null, 2)}\n`, 0o644, ROOT_OWNER);
  files.push({ path: layout.provisioningPath, mode: '0644', owner: rootLabel });
  await ensureDir(hosts.state, 0o700, layout.owner.owner);
  files.push({ path: `${layout.stateDir}/`, mode: '0700', owner: layout.owner.label });
  if (layout.installUnit) {
    const hostUnit = await resolveInRoot(root, layout.unitDevicePath);
    await ensureDir(dirname(hostUnit), 0o755, ROOT_OWNER);
    await writeOwnedFile(hostUnit, layout.unit.text, 0o644, ROOT_OWNER);
  }
  files.push({ path: layout.unitDevicePath, mode: '0644', owner: rootLabel, note: layout.installUnit ? 'installed' : 'already in the image' });
  for (const link of await enableUnit(root, layout.unitDevicePath, layout.unit.wantedBy)) {
    files.push({ path: link, mode: 'link', owner: rootLabel, note: `-> ${layout.unitDevicePath}` });
  }
  return files;
}

async function flashWarnings(root: string, layout: ImageLayout): Promise<string[]> {
  const warnings = layout.owner.warning ? [layout.owner.warning] : [];
  if (!isRoot()) warnings.push(`not running as root: the files meant for root are owned by uid ${process.getuid?.()} (flash images as root)`);
  const program = await resolveInRoot(root, layout.unit.program);
  if (!(await exists(program))) warnings.push(`${layout.unit.program} (the unit's ExecStart) is not in the image yet: install certunnel there`);
  return warnings;
}
