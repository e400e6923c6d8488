/**
 * Presence in OpenSSH mode. sshd holds the tunnels, so the broker learns who
 * is connected the way an operator would: a device's tunnel is up while
 * something listens on loopback within its port block (sshd's remote
 * forwards; the principals file lets a device bind nothing else). Every few
 * seconds this reads /proc/net/tcp and /proc/net/tcp6 (world-readable, no
 * root needed) and writes the changes to the store: online, connected since,
 * and last seen when a tunnel goes away — what `device list`, the metrics and
 * the proxy's "offline since …" page read. Not Linux: nothing is polled.
 *
 * It also learns which process holds each new listener (ListenerPidCache),
 * so that a revocation ends the sshd session from what is already known
 * instead of scanning /proc while the machine may be busy, and it lists
 * the blocks listened on with their owner for the reconciliation of
 * revoked devices (broker/compose/ssh-side.ts).
 */
import { blockFirstOf, type PortPool } from '../core/port-pool.js';
import type { Logger } from '../telemetry/logger.js';
import { activeDevices } from '../store/index.js';
import type { Store } from '../store/types.js';
import { isLoopbackOrAny, ListenerPidCache, readTcpSockets, TCP_LISTEN, type ProcNetTcpEntry } from './session-killer.js';

/**
 * First ports of the pool's blocks in which something listens on loopback
 * (or the wildcard address). A trailing partial block is no block: it is
 * never allocated, and sshd's principals files name none of its ports.
 */
export function listeningBlocks(entries: readonly ProcNetTcpEntry[], pool: PortPool, inodes?: Set<number>): Set<number> {
  const blocks = new Set<number>();
  for (const e of entries) {
    if (e.state !== TCP_LISTEN || !isLoopbackOrAny(e.address)) continue;
    const first = blockFirstOf(e.port, pool);
    if (first === undefined) continue;
    blocks.add(first);
    if (e.inode !== 0) inodes?.add(e.inode);
  }
  return blocks;
}

export interface OpensshPresenceOptions {
  readonly store: Pick<Store, 'findActiveDeviceByPort' | 'setDeviceOnline' | 'listDevices'>;
  readonly pool: PortPool;
  readonly clock: () => Date;
  readonly logger: Logger;
  readonly intervalMs: number;
  /** This broker node's id (a cluster): presence names it, and offline is written only for devices still on it. */
  readonly node?: string | undefined;
  /** Default /proc; tests may point elsewhere. */
  readonly procRoot?: string;
  /** How the fixture's addresses are written (default: this host's byte order). */
  readonly littleEndian?: boolean;
}

export class OpensshPresence {
  /** Devices this broker has written online. */
  private readonly online = new Set<string>();
  /** Block first port → the device that holds it, while it is listening (a block is quarantined before reuse). */
  private readonly owners = new Map<number, string | null>();
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<boolean> | undefined;
  /** Which process holds each listener of the pool, learnt as listeners appear. */
  readonly pids: ListenerPidCache;

  constructor(private readonly o: OpensshPresenceOptions) {
    this.pids = new ListenerPidCache(o.procRoot);
  }

  /** Blocks listened on at the last poll, each with the active device that held it when first seen (null: none). */
  blockOwners(): ReadonlyMap<number, string | null> {
    return this.owners;
  }

  /** The devices the store says are online: the first poll corrects them (sshd sessions outlive a broker restart). */
  async start(): Promise<boolean> {
    for await (const d of activeDevices(this.o.store)) if (d.online) this.online.add(d.id);
    if (!(await this.poll())) {
      this.o.logger.warn({ procRoot: this.o.procRoot ?? '/proc' }, 'OpenSSH mode: no /proc/net/tcp here, so device presence is not tracked');
      return false;
    }
    this.timer = setInterval(() => void this.poll(), this.o.intervalMs);
    this.timer.unref();
    return true;
  }

  /** One look at the listeners (false: there is no /proc/net/tcp to look at); concurrent calls share it. */
  poll(): Promise<boolean> {
    this.polling ??= this.pollOnce()
      .catch((err: unknown) => {
        this.o.logger.error({ err }, 'OpenSSH mode: presence poll failed');
        return true;
      })
      .finally(() => (this.polling = undefined));
    return this.polling;
  }

  private async pollOnce(): Promise<boolean> {
    const sockets = readTcpSockets(this.o.procRoot, { littleEndian: this.o.littleEndian });
    if (!sockets) return false;
    const inodes = new Set<number>();
    const blocks = listeningBlocks(sockets, this.o.pool, inodes);
    this.pids.learn(inodes);
    for (const block of this.owners.keys()) if (!blocks.has(block)) this.owners.delete(block);
    const now = new Set<string>();
    for (const block of blocks) {
      if (!this.owners.has(block)) this.owners.set(block, (await this.o.store.findActiveDeviceByPort(block))?.id ?? null);
      const id = this.owners.get(block);
      if (id) now.add(id);
    }
    const at = this.o.clock();
    for (const id of now) {
      if (this.online.has(id)) continue;
      await this.o.store.setDeviceOnline(id, { online: true, since: at, remoteAddr: null, lastSeen: at, node: this.o.node });
      this.online.add(id);
    }
    for (const id of [...this.online]) {
      if (now.has(id)) continue;
      await this.o.store.setDeviceOnline(id, { online: false, since: null, remoteAddr: null, lastSeen: at, node: this.o.node });
      this.online.delete(id);
    }
    return true;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
