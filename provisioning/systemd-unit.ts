/**
 * The agent's systemd unit, as flash installs and enables it in an image.
 *
 * What we read from the unit: User=/Group= (who owns the agent's files),
 * ExecStart='s --config and --state-dir (where agent.json goes, and the
 * state directory if the unit overrides the config's), its --token-file and
 * the LoadCredential= it names (where the enrollment token goes), and [Install]
 * WantedBy= (which .wants/ directories get the link). Enabling is what
 * `systemctl --root=ROOT enable` does, done by hand because systemctl is
 * not always usable in a container or a build host:
 *
 *   ROOT/etc/systemd/system/multi-user.target.wants/certunnel-agent.service
 *     -> /etc/systemd/system/certunnel-agent.service   (or /usr/lib/…, /lib/…: where the unit is)
 */
import { access, lstat, readFile, readlink, rename, symlink, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProvisionError } from './errors.js';
import { ensureDir, resolveInRoot, ROOT_OWNER } from './image-root.js';

export const UNIT_NAME = 'certunnel-agent.service';
/** Where systemd looks for system units, highest precedence first. */
export const UNIT_DIRS = ['/etc/systemd/system', '/usr/lib/systemd/system', '/lib/systemd/system'] as const;
export const DEFAULT_CONFIG_PATH = '/etc/certunnel/agent.json';

export interface AgentUnit {
  readonly text: string;
  /** User= (null: root). */
  readonly user: string | null;
  readonly group: string | null;
  readonly dynamicUser: boolean;
  /** ExecStart's --config, or the default. */
  readonly configPath: string;
  /** ExecStart's --state-dir, if it overrides the config's stateDir. */
  readonly stateDirOverride: string | null;
  /**
   * Where the enrollment token goes, as on the device, or null (the unit
   * passes no --token-file: the token stays in agent.json).
   */
  readonly tokenFile: { readonly path: string; readonly credential: boolean } | null;
  /** The program ExecStart runs (absolute, as on the device). */
  readonly program: string;
  readonly wantedBy: readonly string[];
}

/** Splits a command line as systemd does for ExecStart (quotes, no variable expansion). */
function splitCommand(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : (m[2] ?? m[3]!));
  return out;
}

function optionValue(args: readonly string[], name: string): string | null {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name) return args[i + 1] ?? null;
    if (args[i]!.startsWith(`${name}=`)) return args[i]!.slice(name.length + 1);
  }
  return null;
}

/**
 * --token-file ${CREDENTIALS_DIRECTORY}/ID (or %d/ID) with LoadCredential=ID:PATH: PATH, read by systemd
 * (as root) for the agent. A literal --token-file PATH: PATH, read by the agent itself.
 */
function unitTokenFile(arg: string | null, loadCredentials: readonly string[], source: string): AgentUnit['tokenFile'] {
  if (arg === null) return null;
  const cred = /^(?:\$\{CREDENTIALS_DIRECTORY\}|\$CREDENTIALS_DIRECTORY|%d)\/([^/]+)$/.exec(arg);
  if (!cred) {
    if (!posix.isAbsolute(arg) || arg.includes('$') || arg.includes('%')) throw new ProvisionError('UNIT_INVALID', `${source}: --token-file ${arg} must be an absolute literal path or \${CREDENTIALS_DIRECTORY}/ID`);
    return { path: arg, credential: false };
  }
  const id = cred[1]!;
  const line = [...loadCredentials].reverse().find((v) => v.startsWith(`${id}:`));
  const path = line?.slice(id.length + 1) ?? '';
  if (!posix.isAbsolute(path) || path.includes('$') || path.includes('%')) {
    throw new ProvisionError('UNIT_INVALID', `${source}: --token-file ${arg} needs LoadCredential=${id}:/absolute/path`);
  }
  return { path, credential: true };
}

export function parseAgentUnit(text: string, source = UNIT_NAME): AgentUnit {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | null = null;
  // Continuation lines (a trailing backslash) are joined first.
  for (const raw of text.replace(/\\\n/g, ' ').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = sections.get(section[1]!) ?? new Map<string, string[]>();
      sections.set(section[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || !current) continue;
    const key = line.slice(0, eq).trim();
    const values = current.get(key) ?? [];
    values.push(line.slice(eq + 1).trim());
    current.set(key, values);
  }
  const last = (section: string, key: string): string | null => sections.get(section)?.get(key)?.at(-1) || null;
  const execStart = last('Service', 'ExecStart');
  if (!execStart) throw new ProvisionError('UNIT_INVALID', `${source} has no [Service] ExecStart=`);
  const args = splitCommand(execStart);
  const program = (args[0] ?? '').replace(/^[-@:+!]+/, '');
  if (!posix.isAbsolute(program)) throw new ProvisionError('UNIT_INVALID', `${source}: ExecStart must name an absolute program`);
  const configPath = optionValue(args, '--config') ?? DEFAULT_CONFIG_PATH;
  const stateDirOverride = optionValue(args, '--state-dir');
  for (const p of [configPath, stateDirOverride]) {
    if (p !== null && (!posix.isAbsolute(p) || p.includes('$'))) throw new ProvisionError('UNIT_INVALID', `${source}: ExecStart path ${p} must be absolute and literal`);
  }
  const tokenFile = unitTokenFile(optionValue(args, '--token-file'), sections.get('Service')?.get('LoadCredential') ?? [], source);
  const wantedBy = (sections.get('Install')?.get('WantedBy') ?? []).flatMap((v) => v.split(/\s+/)).filter((v) => v !== '');
  const user = last('Service', 'User');
  return {
    text,
    user: user === 'root' ? null : user,
    group: last('Service', 'Group'),
    dynamicUser: /^(yes|true|1|on)$/i.test(last('Service', 'DynamicUser') ?? ''),
    configPath,
    stateDirOverride,
    tokenFile,
    program,
    wantedBy: wantedBy.length > 0 ? wantedBy : ['multi-user.target'],
  };
}

/** The unit shipped in this repository (scripts/systemd/), from source or from dist/. */
export async function findRepoUnit(): Promise<string | null> {
  for (const rel of ['../scripts/systemd/', '../../scripts/systemd/']) {
    const path = fileURLToPath(new URL(`${rel}${UNIT_NAME}`, import.meta.url));
    if (await access(path).then(() => true, () => false)) return path;
  }
  return null;
}

export async function readUnitFile(path: string): Promise<AgentUnit> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new ProvisionError('UNIT_MISSING', `cannot read the agent unit ${path}: ${err.code ?? String(err)}`);
  });
  return parseAgentUnit(text, path);
}

export interface ImageUnit {
  /** Where the unit is, as on the device (/etc/systemd/system/certunnel-agent.service). */
  readonly devicePath: string;
  readonly hostPath: string;
  /** Linked to /dev/null: systemd will never start it. */
  readonly masked: boolean;
}

/** The agent unit already in the image, by systemd's precedence, or null. */
export async function findImageUnit(root: string): Promise<ImageUnit | null> {
  for (const dir of UNIT_DIRS) {
    const devicePath = `${dir}/${UNIT_NAME}`;
    const linkPath = join(await resolveInRoot(root, dir), UNIT_NAME);
    const stats = await lstat(linkPath).catch(() => null);
    if (!stats) continue;
    if (stats.isSymbolicLink() && (await readlink(linkPath)) === '/dev/null') return { devicePath, hostPath: linkPath, masked: true };
    const hostPath = await resolveInRoot(root, devicePath);
    if (await access(hostPath).then(() => true, () => false)) return { devicePath, hostPath, masked: false };
  }
  return null;
}

/** The .wants link for TARGET, as on the device. */
export function wantsLink(target: string): string {
  return `/etc/systemd/system/${target}.wants/${UNIT_NAME}`;
}

/** Creates (or replaces) the .wants links of UNIT in ROOT, pointing at UNIT_DEVICE_PATH. Returns the links, as on the device. */
export async function enableUnit(root: string, unitDevicePath: string, wantedBy: readonly string[]): Promise<string[]> {
  const links: string[] = [];
  for (const target of wantedBy) {
    if (!/^[A-Za-z0-9:_.@-]+$/.test(target)) throw new ProvisionError('UNIT_INVALID', `WantedBy=${target} is not a unit name`);
    const link = wantsLink(target);
    const dir = await resolveInRoot(root, dirname(link));
    await ensureDir(dir, 0o755, ROOT_OWNER);
    const hostLink = join(dir, basename(link));
    const existing = await readlink(hostLink).catch(() => null);
    if (existing !== unitDevicePath) {
      // A new link renamed over the old one: never a moment without a link.
      const tmp = join(dir, `.${UNIT_NAME}.${randomBytes(6).toString('hex')}.tmp`);
      await symlink(unitDevicePath, tmp);
      await rename(tmp, hostLink).catch(async (err: unknown) => {
        await unlink(tmp).catch(() => undefined);
        throw err;
      });
    }
    links.push(link);
  }
  return links;
}

/** Whether each .wants link exists and leads to the unit (resolved inside ROOT). */
export async function checkEnabled(root: string, unit: ImageUnit, wantedBy: readonly string[]): Promise<Array<{ link: string; ok: boolean; why?: string }>> {
  const out: Array<{ link: string; ok: boolean; why?: string }> = [];
  for (const target of wantedBy) {
    const link = wantsLink(target);
    const hostLink = join(await resolveInRoot(root, dirname(link)), basename(link));
    const to = await readlink(hostLink).catch(() => null);
    if (to === null) {
      out.push({ link, ok: false, why: 'missing (not enabled)' });
      continue;
    }
    const resolved = await resolveInRoot(root, posix.isAbsolute(to) ? to : posix.join(dirname(link), to));
    out.push(resolved === unit.hostPath ? { link, ok: true } : { link, ok: false, why: `points at ${to}, not ${unit.devicePath}` });
  }
  return out;
}
