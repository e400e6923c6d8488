/**
 * Rotations of the trust roots (issue #14, docs/rotation.md): the rules,
 * over the store's trust_rotations; the phases are in trust-roots.ts.
 *
 * - start(root): one rotation at a time, cluster-wide (the store's unique
 *   index decides a race); the next key is made by this node (compose: it
 *   holds the host CA and the TLS settings), sealed under the current user
 *   CA (rotation-seal.ts) and recorded in phase prepare.
 * - prepare → learn: once every node that is up has loaded the next key
 *   (nodes.rotation_ack); any node's follower may move it (a compare-and-swap).
 * - commit: from learn, when every active device has learned the next trust
 *   (ROTATION_DEVICES_LAGGING says how many have not); `force` commits
 *   anyway, from prepare too (the emergency path: a leaked key).
 * - rollback: from prepare or learn; the next key is dropped.
 *
 * Every phase change is in the audit trail, in the transaction that makes it.
 *
 * "Active device": not revoked, and seen (a tunnel) or issued a certificate
 * within the renew grace window (config certs.renewGraceSeconds): a device
 * quiet for longer than that cannot renew anyway and re-enrolls, so it does
 * not hold a rotation back.
 */
import { BrokerError } from './errors.js';
import { nodeStatus } from './node-status.js';
import { sealNextKey } from './rotation-seal.js';
import { TRUST_ROOTS, type TrustRootName, type TrustRoots } from './trust-roots.js';
import type { BrokerConfig } from './config.js';
import type { Actor, RotationSupport } from './deps.js';
import type { NodeRecord, RotationDevice, Store, TrustRotationRecord } from '../store/types.js';

export type { NextKey, RotationSupport } from './deps.js';

export interface RotationDeps {
  readonly store: Store;
  readonly config: Pick<BrokerConfig, 'certs' | 'cluster'>;
  readonly clock: () => Date;
  readonly trustRoots: TrustRoots;
  readonly rotation: RotationSupport;
}

/** Lagging devices listed by status (the rest are counted). */
export const LAGGING_LIST_LIMIT = 50;

export interface RotationStatus {
  readonly rotation: TrustRotationRecord;
  readonly nodes: { readonly acked: number; readonly up: number; readonly lagging: readonly string[] };
  readonly devices: { readonly active: number; readonly learned: number; readonly lagging: readonly RotationDevice[]; readonly laggingNotListed: number };
}

export function parseTrustRoot(value: unknown): TrustRootName {
  if (typeof value === 'string' && (TRUST_ROOTS as readonly string[]).includes(value)) return value as TrustRootName;
  throw new BrokerError('BAD_REQUEST', `root must be one of ${TRUST_ROOTS.join(', ')}`);
}

const notFound = () => new BrokerError('ROTATION_NOT_FOUND', 'no rotation is under way');

/** The start of the window in which a device counts as active. */
export function activeSince(deps: Pick<RotationDeps, 'config' | 'clock'>): Date {
  return new Date(deps.clock().getTime() - deps.config.certs.renewGraceSeconds * 1000);
}

async function audit(deps: RotationDeps, tx: Pick<Store, 'appendAudit'>, actor: Pick<Actor, 'id' | 'remoteAddr'>, action: string, r: TrustRotationRecord, details: Record<string, unknown> = {}): Promise<void> {
  await tx.appendAudit({
    at: deps.clock(), actor: actor.id, action, target: `rotation:${r.id}`, remoteAddr: actor.remoteAddr, outcome: 'ok',
    details: { root: r.root, from: r.fromFingerprint, next: r.nextFingerprint, ...details },
  });
}

export async function startRotation(deps: RotationDeps, root: TrustRootName, actor: Actor): Promise<TrustRotationRecord> {
  await deps.rotation.refresh();
  if (await deps.store.activeRotation()) throw new BrokerError('ROTATION_IN_PROGRESS', 'a rotation is under way already; commit or roll it back first');
  const snapshot = deps.trustRoots.current();
  if (snapshot.rotation) throw new BrokerError('ROTATION_IN_PROGRESS', 'this node still follows the last rotation; try again in a moment');
  const next = await deps.rotation.makeNextKey(root);
  const now = deps.clock();
  const rotation = await deps.store.transaction(async (tx) => {
    const r = await tx.startRotation({
      root, nextSealed: sealNextKey(next.material, snapshot.signingUserCa), fromFingerprint: next.fromFingerprint, nextFingerprint: next.nextFingerprint, startedAt: now, startedBy: actor.id,
    });
    await audit(deps, tx, actor, 'rotation.start', r);
    return r;
  });
  await deps.rotation.refresh();
  return (await deps.store.findRotation(rotation.id)) ?? rotation;
}

/** The nodes up now, and which of them have not loaded rotation ID's next key. */
function nodeProgress(nodes: readonly NodeRecord[], id: number, now: Date, downAfterSeconds: number): RotationStatus['nodes'] {
  const up = nodes.filter((n) => nodeStatus(n, now, downAfterSeconds) === 'up');
  const lagging = up.filter((n) => n.rotationAck !== id).map((n) => n.id);
  return { acked: up.length - lagging.length, up: up.length, lagging };
}

async function deviceProgress(deps: RotationDeps, r: TrustRotationRecord, limit: number): Promise<RotationStatus['devices']> {
  const counts = await deps.store.rotationDeviceCounts({
    rotationId: r.id, signedBy: r.root === 'user-ca' ? r.nextFingerprint : null, activeSince: activeSince(deps), limit,
  });
  return { ...counts, laggingNotListed: counts.active - counts.learned - counts.lagging.length };
}

export async function rotationStatus(deps: RotationDeps): Promise<RotationStatus> {
  const rotation = await deps.store.activeRotation();
  if (!rotation) throw notFound();
  const nodes = nodeProgress(await deps.store.listNodes(), rotation.id, deps.clock(), deps.config.cluster.downAfterSeconds);
  return { rotation, nodes, devices: await deviceProgress(deps, rotation, LAGGING_LIST_LIMIT) };
}

/**
 * prepare → learn once every up node has acked (a cluster of one: as soon
 * as this node has). Returns whether this call moved it; a no-op otherwise.
 */
export async function learnIfReady(deps: RotationDeps): Promise<boolean> {
  const r = await deps.store.activeRotation();
  if (!r || r.phase !== 'prepare') return false;
  const nodes = nodeProgress(await deps.store.listNodes(), r.id, deps.clock(), deps.config.cluster.downAfterSeconds);
  if (nodes.up === 0 || nodes.lagging.length > 0) return false;
  return deps.store.transaction(async (tx) => {
    if (!(await tx.setRotationPhase(r.id, 'prepare', 'learn', deps.clock()))) return false;
    await audit(deps, tx, { id: 'system', remoteAddr: null }, 'rotation.learn', r, { nodes: nodes.up });
    return true;
  });
}

export interface CommitOptions {
  /** Commit even though devices lag (they lose the old trust) or nodes have not all loaded the next key. */
  readonly force?: boolean;
}

export async function commitRotation(deps: RotationDeps, options: CommitOptions, actor: Actor): Promise<TrustRotationRecord> {
  const r = await deps.store.activeRotation();
  if (!r) throw notFound();
  const force = options.force === true;
  if (r.phase !== 'learn' && !force) {
    throw new BrokerError('ROTATION_NOT_READY', 'the rotation is still in prepare: not every node that is up has loaded the next key (see rotate status)');
  }
  const devices = await deviceProgress(deps, r, 0);
  const lagging = devices.active - devices.learned;
  if (lagging > 0 && !force) {
    throw new BrokerError(
      'ROTATION_DEVICES_LAGGING',
      `${lagging} of ${devices.active} active devices have not learned the next trust yet; wait for them to renew, or commit with force (they then lose the old trust)`,
    );
  }
  const outcome = force && (lagging > 0 || r.phase !== 'learn') ? 'forced' : 'committed';
  const finished = await deps.store.transaction(async (tx) => {
    if (!(await tx.finishRotation(r.id, outcome, actor.id, deps.clock()))) throw notFound();
    await audit(deps, tx, actor, 'rotation.commit', r, { outcome, phase: r.phase, devicesActive: devices.active, devicesLagging: lagging });
    return true;
  });
  if (finished) await deps.rotation.refresh();
  return (await deps.store.findRotation(r.id))!;
}

export async function rollbackRotation(deps: RotationDeps, actor: Actor): Promise<TrustRotationRecord> {
  const r = await deps.store.activeRotation();
  if (!r) throw notFound();
  await deps.store.transaction(async (tx) => {
    if (!(await tx.finishRotation(r.id, 'rolled_back', actor.id, deps.clock()))) throw notFound();
    await audit(deps, tx, actor, 'rotation.rollback', r, { phase: r.phase });
  });
  await deps.rotation.refresh();
  return (await deps.store.findRotation(r.id))!;
}
