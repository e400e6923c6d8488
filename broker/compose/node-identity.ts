/**
 * A broker node's identity in a cluster: `DIR/node.json`, made on the
 * node's first start ({ id: node_<random>, name: the host's name }) and
 * kept, so that a restarted node is the same node (its presence rows, its
 * heartbeat). A single broker has one too; it is simply alone.
 */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { writeFileAtomic } from '../../ca/index.js';
import { BrokerError } from '../core/errors.js';
import { newId } from '../core/secrets.js';
import type { DataPaths } from './data-dir.js';

export interface NodeIdentity {
  readonly id: string;
  readonly name: string;
}

export const NODE_ID = /^node_[a-z0-9]{16}$/;
const NODE_NAME = /^[\x21-\x7e]{1,64}$/;

export function newNodeIdentity(name = hostname()): NodeIdentity {
  // 80 random bits in base32 (16 characters): NODE_ID reads it back.
  const id = newId('node');
  return { id, name: NODE_NAME.test(name) ? name : 'node' };
}

export async function writeNodeIdentity(paths: Pick<DataPaths, 'node'>, identity: NodeIdentity): Promise<void> {
  await writeFileAtomic(paths.node, `${JSON.stringify(identity)}\n`, { mode: 0o600 });
}

/** The node's identity, made and written on first use. */
export async function loadNodeIdentity(paths: Pick<DataPaths, 'node'>): Promise<NodeIdentity> {
  let text: string;
  try {
    text = await readFile(paths.node, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const identity = newNodeIdentity();
    await writeNodeIdentity(paths, identity);
    return identity;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  const { id, name } = (parsed ?? {}) as Partial<NodeIdentity>;
  if (typeof id !== 'string' || !NODE_ID.test(id) || typeof name !== 'string' || !NODE_NAME.test(name)) {
    throw new BrokerError('CONFIG_INVALID', `${paths.node} is not a node identity ({"id":"node_…","name":"…"})`);
  }
  return { id, name };
}
