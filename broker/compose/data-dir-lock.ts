/**
 * One broker per data directory. Two brokers on one directory would share
 * the SQLite file, the KRL and the sshd files, and the second's exit would
 * delete the first's runtime file. The lock is a file created with O_EXCL
 * (`wx`) holding the owner's pid: portable (unlike flock, it also shows who
 * holds it to a person with `cat`), and a lock left by a broker that was
 * killed is recognised because its pid no longer runs, then taken over.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BrokerError } from '../core/errors.js';
import type { Logger } from '../telemetry/logger.js';

export const LOCK_FILE = 'broker.lock';

export interface DataDirLock {
  /** Removes the lock file if it is still this process's. */
  release(): Promise<void>;
}

/** The pid recorded in a lock file, or undefined when it holds none (a torn write). */
async function lockOwner(path: string): Promise<number | undefined> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
  try {
    const pid = (JSON.parse(text) as { pid?: unknown }).pid;
    return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether PID is another running process. Our own pid in the file is a
 * previous life of this process's pid (a container's broker is often pid 1
 * on every start); EPERM means it runs under another user.
 */
function isOtherLiveProcess(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function tryCreate(path: string): Promise<boolean> {
  try {
    const file = await open(path, 'wx', 0o644);
    try {
      await file.writeFile(`${JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() })}\n`);
    } finally {
      await file.close();
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/** Takes DIR's lock, or throws DATA_DIR_LOCKED naming the pid that holds it. */
export async function lockDataDir(dir: string, logger: Logger): Promise<DataDirLock> {
  const path = join(dir, LOCK_FILE);
  // Two brokers taking over the same stale lock at once: one creates the file, the other finds it held.
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await tryCreate(path)) {
      return {
        release: async () => {
          if ((await lockOwner(path)) === process.pid) await rm(path, { force: true });
        },
      };
    }
    const owner = await lockOwner(path);
    if (owner !== undefined && isOtherLiveProcess(owner)) {
      throw new BrokerError(
        'DATA_DIR_LOCKED',
        `${dir} is in use by the broker with pid ${owner} (lock file ${path}); stop that broker first, or give another --data`,
      );
    }
    logger.warn({ lockFile: path, stalePid: owner ?? null }, `taking over a stale lock of ${dir}: pid ${owner ?? '(none recorded)'} no longer runs`);
    await rm(path, { force: true });
  }
  throw new BrokerError('DATA_DIR_LOCKED', `${dir}: could not take the lock file ${path}; another broker is starting on it`);
}
