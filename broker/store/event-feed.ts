/**
 * The events channel of a PostgreSQL store (migration 004: triggers NOTIFY
 * `certunnel_events` in the transaction of each change): one dedicated
 * connection, not one of the store's pool, that LISTENs and hands every
 * payload to the caller. What the payloads mean is the caller's
 * (broker/compose/cluster-events.ts); this module only keeps the line up:
 *
 * - a connection that errors, ends, or does not answer a ping within
 *   pingTimeoutMs (a partition sends no RST) is dropped and reported with
 *   onDown, once; a new one is tried after a jittered, doubling delay;
 * - onListening is called each time LISTEN has succeeded: notifications
 *   sent while no connection listened are lost, so the caller re-reads what
 *   it needs from the store then (PostgreSQL does not queue them for a
 *   listener that is gone).
 *
 * The connection's application_name names the node, so an operator sees it
 * in pg_stat_activity. The URL (it holds a password) is never logged.
 */
import pg from 'pg';
import { EVENTS_CHANNEL } from './migrations/004-cluster-events.js';
import { ROTATIONS_CHANNEL } from './migrations/005-trust-rotations.js';

export { EVENTS_CHANNEL, ROTATIONS_CHANNEL };

export interface EventFeedOptions {
  /** postgres://… (the store's URL). */
  readonly url: string;
  /** application_name of the listening connection, e.g. `certunnel-events:<node id>`. */
  readonly applicationName: string;
  /** The channel to LISTEN on (default EVENTS_CHANNEL; rotations: ROTATIONS_CHANNEL, migration 005). */
  readonly channel?: string;
  /** A notification's payload, as sent. */
  onNotification(payload: string): void;
  /** LISTEN succeeded (after start or a reconnection). */
  onListening(): void;
  /** The listening connection is gone (ERR: why, without the URL); reconnection is under way. */
  onDown(err: Error): void;
  /** First reconnection delay; doubles up to maxDelayMs, each with jitter (default 500 ms, 10 s). */
  readonly firstDelayMs?: number;
  readonly maxDelayMs?: number;
  /** How often the listening connection is pinged, and how long an answer may take (default 5 s, 5 s). */
  readonly pingIntervalMs?: number;
  readonly pingTimeoutMs?: number;
  readonly random?: () => number;
}

export interface EventFeed {
  /** Whether a connection listens right now. */
  listening(): boolean;
  close(): Promise<void>;
}

/** The delay before reconnection ATTEMPT (1-based): FIRST doubling up to MAX, scaled by a random factor in [0.5, 1). */
export function reconnectDelay(attempt: number, o: { firstMs: number; maxMs: number }, random: () => number): number {
  const base = Math.min(o.maxMs, o.firstMs * 2 ** Math.min(attempt - 1, 20));
  return Math.round(base * (0.5 + random() / 2));
}

/** Only what names the failure: a code or pg's message (which never holds the URL). */
function describe(err: unknown): Error {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new Error(typeof code === 'string' ? `${code}: ${message}` : message);
}

export function openEventFeed(o: EventFeedOptions): EventFeed {
  const random = o.random ?? Math.random;
  const firstMs = o.firstDelayMs ?? 500;
  const maxMs = o.maxDelayMs ?? 10_000;
  const pingIntervalMs = o.pingIntervalMs ?? 5000;
  const pingTimeoutMs = o.pingTimeoutMs ?? 5000;
  const channel = o.channel ?? EVENTS_CHANNEL;
  if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error('event feed: invalid channel name');
  let client: pg.Client | undefined;
  let up = false;
  let closed = false;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let pingTimer: NodeJS.Timeout | undefined;

  const drop = (c: pg.Client, err: unknown): void => {
    if (c !== client) return;
    client = undefined;
    clearInterval(pingTimer);
    const wasUp = up;
    up = false;
    c.removeAllListeners('notification');
    c.on('error', () => undefined);
    void c.end().catch(() => undefined);
    if (closed) return;
    if (wasUp || attempt === 0) o.onDown(describe(err));
    attempt += 1;
    retryTimer = setTimeout(connect, reconnectDelay(attempt, { firstMs, maxMs }, random));
    retryTimer.unref();
  };

  const ping = (c: pg.Client): void => {
    let answered = false;
    const timer = setTimeout(() => {
      if (!answered) drop(c, new Error(`no answer to a ping within ${pingTimeoutMs} ms`));
    }, pingTimeoutMs);
    timer.unref();
    c.query('SELECT 1').then(
      () => {
        answered = true;
        clearTimeout(timer);
      },
      (err: unknown) => {
        answered = true;
        clearTimeout(timer);
        drop(c, err);
      },
    );
  };

  async function connect(): Promise<void> {
    if (closed) return;
    const c = new pg.Client({ connectionString: o.url, application_name: o.applicationName, keepAlive: true, connectionTimeoutMillis: pingTimeoutMs * 2 });
    client = c;
    c.on('error', (err) => drop(c, err));
    c.on('end', () => drop(c, new Error('connection ended')));
    c.on('notification', (msg) => {
      if (msg.channel === channel && msg.payload !== undefined) o.onNotification(msg.payload);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${channel}`);
    } catch (err) {
      drop(c, err);
      return;
    }
    if (c !== client || closed) return;
    up = true;
    attempt = 0;
    pingTimer = setInterval(() => ping(c), pingIntervalMs);
    pingTimer.unref();
    o.onListening();
  }

  void connect();
  return {
    listening: () => up,
    async close() {
      closed = true;
      clearTimeout(retryTimer);
      clearInterval(pingTimer);
      const c = client;
      client = undefined;
      up = false;
      if (c) {
        c.removeAllListeners('end');
        c.on('error', () => undefined);
        await c.end().catch(() => undefined);
      }
    },
  };
}
