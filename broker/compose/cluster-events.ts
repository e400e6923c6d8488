/**
 * Events between broker nodes on one PostgreSQL database (issue #13,
 * docs/cluster.md "Events between nodes"). The database's triggers
 * (migration 004) NOTIFY in the transaction of each change; every node
 * listens on its own connection (broker/store/event-feed.ts) and does
 * locally what the node that made the change did:
 *
 * - `device.revoked`: the revocation hook (deny in memory, end the device's
 *   live tunnels, forget it in the proxy, rewrite the KRL and, in OpenSSH
 *   mode, sshd's, then end whatever logged in before that landed);
 * - `certificates.revoked` (key rotation): the rotation hook (deny the old
 *   serials, rewrite the KRL, end the sessions made with them); without
 *   serials, a full reconciliation;
 * - `device.connected` from another node (takeover): end this node's
 *   sessions of that device that began no later than the new one.
 *
 * A node hears its own changes too: the hooks are idempotent, and KRL
 * rebuilds that queue up are coalesced by the revocation list.
 *
 * Fail closed on missed events. PostgreSQL does not keep notifications for
 * a listener that is gone, so while the node is not listening (state
 * `down`) it polls: every pollWhileDownMs it re-reads the revocations from
 * the store, rewrites the KRL and ends the live sessions they deny. When
 * the listening connection is back (state `catching-up`) it does that once
 * more, ends its sessions of devices the store says connected to another
 * node meanwhile (a missed takeover), with the login cache suspended, and
 * only then is `listening` again. Device logins on the embedded gateway always ask the store
 * (issued.ts), which vouches for every login while it answers; only when
 * it answers STORE_UNAVAILABLE does the login cache (issued-cache.ts)
 * stand in, never while catching up.
 */
import type { CoreHooks } from '../core/deps.js';
import type { Logger } from '../telemetry/logger.js';
import type { IssuedCache } from '../ssh/issued-cache.js';
import { openEventFeed, type EventFeed, type EventFeedOptions } from '../store/event-feed.js';
import { reconcileRevocations } from './maintenance.js';
import { NODE_ID } from './node-identity.js';
import type { RevocationList } from './revocation-list.js';
import type { SshSide } from './ssh-side.js';

export type ClusterEvent =
  | { readonly type: 'device.revoked'; readonly deviceId: string }
  | { readonly type: 'certificates.revoked'; readonly deviceId: string; readonly serials?: readonly bigint[] }
  | { readonly type: 'device.connected'; readonly deviceId: string; readonly node: string; readonly since: Date };

export type EventsState = 'down' | 'catching-up' | 'listening';

const DEVICE_ID = /^dev_[a-z0-9]{1,64}$/i;
const SERIAL = /^[1-9][0-9]{0,18}$/;
const MAX_SERIALS = 1000;

/**
 * A notification's payload as an event, or null if it is not one this
 * version knows (ignored, and logged by the caller): ids only, checked
 * against their formats, since they reach the hooks.
 */
export function parseClusterEvent(payload: string): ClusterEvent | null {
  let v: unknown;
  try {
    v = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null) return null;
  const e = v as Record<string, unknown>;
  if (typeof e.deviceId !== 'string' || !DEVICE_ID.test(e.deviceId)) return null;
  const deviceId = e.deviceId;
  switch (e.type) {
    case 'device.revoked':
      return { type: 'device.revoked', deviceId };
    case 'certificates.revoked': {
      if (e.serials === undefined || e.serials === null) return { type: 'certificates.revoked', deviceId };
      const serials = e.serials;
      if (!Array.isArray(serials) || serials.length > MAX_SERIALS || !serials.every((s) => typeof s === 'string' && SERIAL.test(s))) return null;
      return { type: 'certificates.revoked', deviceId, serials: (serials as string[]).map((s) => BigInt(s)) };
    }
    case 'device.connected': {
      const { node, since } = e;
      if (typeof node !== 'string' || !NODE_ID.test(node) || typeof since !== 'number' || !Number.isSafeInteger(since) || since < 0) return null;
      return { type: 'device.connected', deviceId, node, since: new Date(since) };
    }
    default:
      return null;
  }
}

export interface ClusterEventsOptions {
  readonly databaseUrl: string;
  /** This node's id (node-identity.ts): its own device.connected events are not a takeover. */
  readonly nodeId: string;
  readonly logger: Logger;
  /** The hooks the API's revocations run after commit (start.ts revocationHooks). */
  readonly hooks: CoreHooks;
  readonly revocations: RevocationList;
  readonly ssh: Pick<SshSide, 'reconcile' | 'deviceConnectedElsewhere' | 'reconcileTakeovers'>;
  /** The embedded gateway's login cache (absent in OpenSSH mode). */
  readonly loginCache?: IssuedCache;
  /** While not listening, how often revocations are re-read and live sessions reconciled (default 2 s). */
  readonly pollWhileDownMs?: number;
  /** The event feed's reconnection and ping settings (tests). */
  readonly feed?: Pick<EventFeedOptions, 'firstDelayMs' | 'maxDelayMs' | 'pingIntervalMs' | 'pingTimeoutMs'>;
}

export interface ClusterEvents {
  state(): EventsState;
  /** Events handled since start, by type, and catch-ups done. */
  stats(): { events: Record<string, number>; catchUps: number; ignored: number };
  close(): Promise<void>;
}

export function startClusterEvents(o: ClusterEventsOptions): ClusterEvents {
  const log = o.logger.child({ component: 'cluster-events' });
  const pollMs = o.pollWhileDownMs ?? 2000;
  let state: EventsState = 'down';
  let closed = false;
  let pollTimer: NodeJS.Timeout | undefined;
  let catchUpTimer: NodeJS.Timeout | undefined;
  const counts: Record<string, number> = {};
  let catchUps = 0;
  let ignored = 0;

  const reconcile = (): Promise<number> => reconcileRevocations({ revocations: o.revocations, ssh: o.ssh, logger: log });

  const handle = async (event: ClusterEvent): Promise<void> => {
    counts[event.type] = (counts[event.type] ?? 0) + 1;
    switch (event.type) {
      case 'device.revoked':
        o.loginCache?.forgetDevice(event.deviceId);
        await o.hooks.deviceRevoked(event.deviceId);
        return;
      case 'certificates.revoked':
        if (event.serials) {
          o.loginCache?.forgetSerials(event.serials);
          await o.hooks.certificatesRevoked(event.deviceId, event.serials);
        } else {
          o.loginCache?.forgetDevice(event.deviceId);
          await reconcile();
        }
        return;
      case 'device.connected': {
        if (event.node === o.nodeId) return;
        const ended = await o.ssh.deviceConnectedElsewhere(event.deviceId, event.since);
        if (ended > 0) log.info({ deviceId: event.deviceId, node: event.node, ended }, 'device connected to another node: ended its older sessions here');
        return;
      }
    }
  };

  const onNotification = (payload: string): void => {
    const event = parseClusterEvent(payload);
    if (!event) {
      ignored += 1;
      log.warn({ bytes: payload.length, payload: payload.slice(0, 300) }, 'ignored a cluster event this node does not understand');
      return;
    }
    handle(event).catch((err: unknown) => log.error({ err, type: event.type, deviceId: event.deviceId }, 'handling a cluster event failed; the reconciliation will catch up'));
  };

  /** While down: re-read revocations and reconcile live sessions every pollMs (the store may be away too: logged, retried). */
  const startPolling = (): void => {
    if (pollTimer || closed) return;
    let running = false;
    pollTimer = setInterval(() => {
      if (running || state === 'listening') return;
      running = true;
      reconcile()
        .catch((err: unknown) => log.debug({ err }, 'revocations not re-read while the events are down'))
        .finally(() => (running = false));
    }, pollMs);
    pollTimer.unref();
  };

  /** Listening again: revocations re-read and sessions reconciled before the login cache is trusted; retried until it works. */
  const catchUp = (): void => {
    clearTimeout(catchUpTimer);
    if (closed || !feed.listening()) return;
    // Revocations first, then takeovers it may have missed (a device that connected to another node meanwhile).
    const caughtUp = async (): Promise<number> => (await reconcile()) + ((await o.ssh.reconcileTakeovers?.()) ?? 0);
    caughtUp().then(
      (ended) => {
        if (closed || !feed.listening() || state !== 'catching-up') return;
        catchUps += 1;
        state = 'listening';
        clearInterval(pollTimer);
        pollTimer = undefined;
        o.loginCache?.trust();
        log.info({ ended }, 'cluster events: listening, caught up with the store');
      },
      (err: unknown) => {
        log.warn({ err }, 'cluster events: catching up failed; retrying');
        catchUpTimer = setTimeout(catchUp, pollMs);
        catchUpTimer.unref();
      },
    );
  };

  const feed: EventFeed = openEventFeed({
    ...o.feed,
    url: o.databaseUrl,
    applicationName: `certunnel-events:${o.nodeId}`,
    onNotification,
    onListening: () => {
      state = 'catching-up';
      o.loginCache?.suspend();
      catchUp();
    },
    onDown: (err) => {
      const was = state;
      state = 'down';
      clearTimeout(catchUpTimer);
      startPolling();
      log.warn({ err: err.message, was }, 'cluster events: not listening; polling the store for revocations until the connection is back');
    },
  });
  startPolling();

  return {
    state: () => state,
    stats: () => ({ events: { ...counts }, catchUps, ignored }),
    async close() {
      closed = true;
      clearInterval(pollTimer);
      clearTimeout(catchUpTimer);
      await feed.close();
    },
  };
}
