/**
 * The rules about the nodes of a cluster that every node applies the same
 * way: whether a node is up, down or stopped (from its row and this node's
 * clock), and the SSH endpoints devices are told about: the nodes that are
 * up, the asking node first, each address once (nodes behind one load
 * balancer share it).
 */
import type { NodeStatus, SshAddressWire } from '../../api/index.js';
import type { NodeRecord } from '../store/types.js';
import { splitHostPort } from './config.js';

export function nodeStatus(node: Pick<NodeRecord, 'heartbeatAt' | 'stoppedAt' | 'downAt'>, now: Date, downAfterSeconds: number): NodeStatus {
  if (node.stoppedAt !== null) return 'stopped';
  if (node.downAt !== null || now.getTime() - node.heartbeatAt.getTime() > downAfterSeconds * 1000) return 'down';
  return 'up';
}

/** The oldest heartbeat a running node may have and still be up at NOW. */
export function staleBefore(now: Date, downAfterSeconds: number): Date {
  return new Date(now.getTime() - downAfterSeconds * 1000);
}

/** host:port, an IPv6 host in brackets (what splitHostPort reads back). */
export function formatHostPort({ host, port }: SshAddressWire): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A node's stored endpoint read back; undefined if it is not host:port (a row written by hand). */
export function parseHostPort(text: string): SshAddressWire | undefined {
  const { host, port } = splitHostPort(text);
  return host !== '' && Number.isInteger(port) && port > 0 && port < 65536 ? { host, port } : undefined;
}

/** SELF first (always: it is answering), then every other node up at NOW, in the list's order; each address once. */
export function upSshEndpoints(nodes: readonly NodeRecord[], self: { id: string; endpoint: SshAddressWire }, now: Date, downAfterSeconds: number): SshAddressWire[] {
  const out: SshAddressWire[] = [self.endpoint];
  const seen = new Set([formatHostPort(self.endpoint)]);
  for (const node of nodes) {
    if (node.id === self.id || nodeStatus(node, now, downAfterSeconds) !== 'up') continue;
    const endpoint = parseHostPort(node.sshEndpoint);
    if (!endpoint || seen.has(formatHostPort(endpoint))) continue;
    seen.add(formatHostPort(endpoint));
    out.push(endpoint);
  }
  return out;
}
