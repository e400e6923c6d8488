/**
 * Presence in OpenSSH mode. sshd holds the tunnels, so the broker learns who
 * is connected the way an operator would: a device's tunnel is up while
 * something listens on loopback within its port block (sshd's remote
 * forwards; the principals file lets a device bind nothing else). Every few
 * seconds this reads /proc/net/tcp and /proc/net/tcp6 (world-readable, no
 * root needed) and writes the changes to the store: online, connected since,
 * and last seen when a tunnel goes away — what `device list`, the metrics and
 * the proxy's "offline since …" page read. Not Linux: nothing is polled.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../logger.js';
import type { DeviceRecord, Page, Store } from '../store/types.js';
import { isLoopbackOrAny, parseProcNetTcp, TCP_LISTEN, type ProcNetTcpEntry } from './session-killer.js';

export interface PortPool {
  readonly first: number;
  readonly last: number;
  readonly perDevice: number;
}

/** First ports of the pool's blocks in which something listens on loopback (or the wildcard address). */
export function listeningBlocks(entries: readonly ProcNetTcpEntry[], pool: PortPool): Set<number> {
  const blocks = new Set<number>();
  for (const e of entries) {
    if (e.state !== TCP_LISTEN || e.port < pool.first || e.port > pool.last || !isLoopbackOrAny(e.address)) continue;
    blocks.add(pool.first + Math.floor((e.port - pool.first) / pool.perDevice) * pool.perDevice);
  }
  return blocks;
}

export interface OpensshPresenceOptions {
  readonly store: Pick<Store, 'findActiveDeviceByPort' | 'setDeviceOnline' | 'listDevices'>;
  readonly pool: PortPool;
  readonly clock: () => Date;
  readonly logger: Logger;
  readonly intervalMs: number;
  /** Default /proc; tests may point elsewhere. */
  readonly procRoot?: string;
  /** How the fixture's addresses are written (default: this host's byte order). */
  readonly littleEndian?: boolean;
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

export class OpensshPresence {
  /** Online devices by id, with the block that made them so. */
  private readonly online = new Map<string, number>();
  /** Block first port → the device that holds it, while it is listening (a block is quarantined before reuse). */
  private readonly owners = new Map<number, string | null>();
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;

  constructor(private readonly o: OpensshPresenceOptions) {}

  /** The devices the store says are online: the first poll corrects them (sshd sessions outlive a broker restart). */
  async start(): Promise<boolean> {
    const procRoot = this.o.procRoot ?? '/proc';
    if ((await readText(join(procRoot, 'net', 'tcp'))) === null) {
      this.o.logger.warn({ procRoot }, 'OpenSSH mode: no /proc/net/tcp here, so device presence is not tracked');
      return false;
    }
    let cursor: string | null = null;
    do {
      const page: Page<DeviceRecord> = await this.o.store.listDevices({ status: 'active', limit: 1000, cursor });
      for (const d of page.items) if (d.online && d.portFirst !== null) this.online.set(d.id, d.portFirst);
      cursor = page.nextCursor;
    } while (cursor);
    await this.poll();
    this.timer = setInterval(() => void this.poll(), this.o.intervalMs);
    this.timer.unref();
    return true;
  }

  /** One look at the listeners; concurrent calls share it. */
  poll(): Promise<void> {
    this.polling ??= this.pollOnce()
      .catch((err: unknown) => this.o.logger.error({ err }, 'OpenSSH mode: presence poll failed'))
      .finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async pollOnce(): Promise<void> {
    const procRoot = this.o.procRoot ?? '/proc';
    const text = `${(await readText(join(procRoot, 'net', 'tcp'))) ?? ''}\n${(await readText(join(procRoot, 'net', 'tcp6'))) ?? ''}`;
    const blocks = listeningBlocks(parseProcNetTcp(text, { littleEndian: this.o.littleEndian }), this.o.pool);
    for (const block of this.owners.keys()) if (!blocks.has(block)) this.owners.delete(block);
    const now = new Map<string, number>();
    for (const block of blocks) {
      if (!this.owners.has(block)) this.owners.set(block, (await this.o.store.findActiveDeviceByPort(block))?.id ?? null);
      const id = this.owners.get(block);
      if (id) now.set(id, block);
    }
    const at = this.o.clock();
    for (const id of now.keys()) {
      if (this.online.has(id)) continue;
      await this.o.store.setDeviceOnline(id, { online: true, since: at, remoteAddr: null, lastSeen: at });
      this.online.set(id, now.get(id)!);
    }
    for (const id of [...this.online.keys()]) {
      if (now.has(id)) continue;
      await this.o.store.setDeviceOnline(id, { online: false, since: null, remoteAddr: null, lastSeen: at });
      this.online.delete(id);
    }
  }

  close(): void {
    clearInterval(this.timer);
  }
}
