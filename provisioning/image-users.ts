/**
 * Users and groups as the device image defines them (ROOT/etc/passwd and
 * ROOT/etc/group), never this machine's: the uid that owns the agent's
 * files must be the one the device's systemd will run the agent as.
 */
import { readFile } from 'node:fs/promises';
import { resolveInRoot, type Owner } from './image-root.js';

async function readDb(root: string, file: string): Promise<string[][]> {
  const text = await readFile(await resolveInRoot(root, file), 'utf8').catch(() => '');
  return text.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(':'));
}

/** NAME's uid and primary gid in the image, or null when the image has no such user (or no /etc/passwd). */
export async function lookupImageUser(root: string, name: string): Promise<Owner | null> {
  const row = (await readDb(root, '/etc/passwd')).find((f) => f[0] === name && f.length >= 4);
  if (!row) return null;
  const uid = Number(row[2]);
  const gid = Number(row[3]);
  return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : null;
}

export async function lookupImageGroup(root: string, name: string): Promise<number | null> {
  const row = (await readDb(root, '/etc/group')).find((f) => f[0] === name && f.length >= 3);
  const gid = Number(row?.[2]);
  return row && Number.isInteger(gid) ? gid : null;
}

/** The name of group GID in the image, or null. */
export async function lookupImageGroupName(root: string, gid: number): Promise<string | null> {
  return (await readDb(root, '/etc/group')).find((f) => f.length >= 3 && Number(f[2]) === gid)?.[0] ?? null;
}
