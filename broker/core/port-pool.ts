/**
 * The port-pool layout, one rule for every room (DESIGN: "Port block"): the
 * pool first..last is cut into blocks of perDevice ports from first
 * (first + k * perDevice); a trailing partial block is never allocated.
 * The allocator (store), the gateway's principal check (ssh), sshd's
 * principals files and presence (openssh) and nginx's upstream list (proxy)
 * all read the layout from here. Slot meanings are contract: api/tunnel.ts.
 */
import type { PortBlock } from '../../ca/index.js';
import { SLOT } from '../../api/index.js';

export type { PortBlock };

/** The broker's port pool (config `ports`). */
export interface PortPool {
  readonly first: number;
  readonly last: number;
  readonly perDevice: number;
}

/** Whether POOL is whole ports in 1-65535 with room for at least one block of at least MINPERDEVICE ports. */
export function isValidPool(pool: PortPool, minPerDevice = 1): boolean {
  const { first, last, perDevice } = pool;
  return [first, last, perDevice].every(Number.isInteger) && first >= 1 && last <= 65535 && perDevice >= minPerDevice && first + perDevice - 1 <= last;
}

/** Every block the allocator can hand out, in order. */
export function* poolBlocks(pool: PortPool): Generator<PortBlock> {
  for (let first = pool.first; first + pool.perDevice - 1 <= pool.last; first += pool.perDevice) {
    yield { first, last: first + pool.perDevice - 1 };
  }
}

/** How many blocks the pool holds. */
export function poolBlockCount(pool: PortPool): number {
  return Math.max(0, Math.floor((pool.last - pool.first + 1) / pool.perDevice));
}

/** Is BLOCK exactly one of the pool's blocks? */
export function isPoolBlock(block: PortBlock, pool: PortPool): boolean {
  return (
    block.first >= pool.first &&
    block.last <= pool.last &&
    (block.first - pool.first) % pool.perDevice === 0 &&
    block.last - block.first + 1 === pool.perDevice
  );
}

/** The first port of the block that holds PORT, or undefined outside the pool's whole blocks. */
export function blockFirstOf(port: number, pool: PortPool): number | undefined {
  if (!Number.isInteger(port) || port < pool.first || port > pool.last) return undefined;
  const first = pool.first + Math.floor((port - pool.first) / pool.perDevice) * pool.perDevice;
  return first + pool.perDevice - 1 <= pool.last ? first : undefined;
}

/** Is PORT one of BLOCK's ports? */
export function inBlock(port: number, block: PortBlock): boolean {
  return Number.isInteger(port) && port >= block.first && port <= block.last;
}

/**
 * Well-known service ports an operator may name instead of a port of the
 * block, mapped to the block's slot, so that `ssh -J operator@broker kiosk-42`
 * (which asks for kiosk-42:22) works.
 */
export const SERVICE_PORT_SLOTS: ReadonlyMap<number, number> = new Map([
  [22, SLOT.ssh],
  [80, SLOT.http],
]);
