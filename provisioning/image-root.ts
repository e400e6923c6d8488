/**
 * Paths inside a device image's root filesystem mounted at ROOT. The image
 * is someone else's filesystem and we run as root: a symlink in it (say
 * etc -> /etc, absolute) must be read as the device would read it, relative
 * to ROOT, never as a path on this machine. So every path is resolved one
 * component at a time, as chroot(2) would, and never leaves ROOT.
 */
import { chown, lstat, mkdir, open, readlink, realpath, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, posix } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ProvisionError } from './errors.js';

const MAX_SYMLINKS = 40;

export interface Owner {
  readonly uid: number;
  readonly gid: number;
}

export const ROOT_OWNER: Owner = Object.freeze({ uid: 0, gid: 0 });

/**
 * Whether OWNER can and must be set on a file we create. Not running as
 * root, we cannot give a file to root: it stays ours (flash warns once);
 * giving it to another user still fails, loudly.
 */
function needsChown(current: { uid: number; gid: number }, owner: Owner): boolean {
  if (current.uid === owner.uid && current.gid === owner.gid) return false;
  return !(process.getuid?.() !== 0 && owner.uid === 0);
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** The host path of DEVICE_PATH (absolute, as on the device) inside ROOT. Missing components are kept as they are. */
export async function resolveInRoot(root: string, devicePath: string): Promise<string> {
  if (!posix.isAbsolute(devicePath)) throw new ProvisionError('BAD_ARGUMENT', `${devicePath} is not an absolute path`);
  const base = await realpath(root);
  const queue = devicePath.split('/').filter((p) => p !== '');
  const resolved: string[] = [];
  let hops = 0;
  let missing = false;
  while (queue.length > 0) {
    const part = queue.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      resolved.pop(); // clamped at ROOT, as in a chroot
      continue;
    }
    if (missing) {
      resolved.push(part);
      continue;
    }
    const candidate = join(base, ...resolved, part);
    let stats;
    try {
      stats = await lstat(candidate);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      missing = true;
      resolved.push(part);
      continue;
    }
    if (stats.isSymbolicLink()) {
      if (++hops > MAX_SYMLINKS) throw new ProvisionError('PATH_ESCAPES_ROOT', `too many symlinks resolving ${devicePath} in ${root}`);
      const target = await readlink(candidate);
      if (target.startsWith('/')) resolved.length = 0;
      queue.unshift(...target.split('/').filter((p) => p !== ''));
      continue;
    }
    resolved.push(part);
  }
  return join(base, ...resolved);
}

/** Creates DIR (host path) and its missing parents; parents root-owned 0755, DIR with MODE and OWNER (also when it exists). */
export async function ensureDir(dir: string, mode: number, owner: Owner): Promise<void> {
  await mkdir(dirname(dir), { recursive: true, mode: 0o755 });
  await mkdir(dir, { mode }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  const stats = await lstat(dir);
  if (!stats.isDirectory()) throw new ProvisionError('IMAGE_INVALID', `${dir} exists and is not a directory`);
  await chownIfNeeded(dir, owner);
  const handle = await open(dir, 'r');
  try {
    await handle.chmod(mode);
  } finally {
    await handle.close();
  }
}

async function chownIfNeeded(path: string, owner: Owner): Promise<void> {
  if (!needsChown(await lstat(path), owner)) return;
  try {
    await chown(path, owner.uid, owner.gid);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EPERM') {
      throw new ProvisionError('IMAGE_INVALID', `cannot give ${path} to ${owner.uid}:${owner.gid}: flashing an image needs root`, 1, { cause: err });
    }
    throw err;
  }
}

/** Writes PATH (host path) atomically with MODE and OWNER set before it appears under its name. */
export async function writeOwnedFile(path: string, data: string, mode: number, owner: Owner): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(tmp, 'wx', 0o600);
  try {
    await handle.writeFile(data);
    if (needsChown(await handle.stat(), owner)) await handle.chown(owner.uid, owner.gid);
    await handle.chmod(mode);
    await handle.sync();
    await handle.close();
    await rename(tmp, path);
  } catch (err) {
    await handle.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if ((err as NodeJS.ErrnoException).code === 'EPERM') {
      throw new ProvisionError('IMAGE_INVALID', `cannot give ${path} to ${owner.uid}:${owner.gid}: flashing an image needs root`, 1, { cause: err });
    }
    throw err;
  }
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
