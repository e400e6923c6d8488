/**
 * PresenceWriter against a fake store whose every write the test settles by
 * hand (land, fail STORE_BUSY, fail for good, or never), with the backoff's
 * timers run by hand too: nothing here waits for real time.
 */
import test from 'ava';
import { BrokerError } from '../../../broker/core/errors.js';
import { PresenceWriter, type PresenceWriterLogger, type WriterTimers } from '../../../broker/core/presence-writer.js';
import type { DevicePresence } from '../../../broker/store/types.js';

interface Call {
  readonly id: string;
  readonly presence: DevicePresence;
  resolve(): void;
  reject(err: unknown): void;
}

/** A store whose writes stay in flight until the test settles them; LANDED is what the store says now. */
class FakeStore {
  readonly calls: Call[] = [];
  readonly landed = new Map<string, DevicePresence>();
  inFlight = 0;
  maxInFlight = 0;

  setDeviceOnline(id: string, presence: DevicePresence): Promise<void> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise<void>((resolve, reject) => {
      this.calls.push({
        id, presence,
        resolve: () => {
          this.inFlight--;
          this.landed.set(id, presence);
          resolve();
        },
        reject: (err) => {
          this.inFlight--;
          reject(err);
        },
      });
    });
  }

  /** The calls not settled yet, oldest first. */
  open(): Call[] {
    return this.calls.filter((c) => !settled.has(c));
  }
}

const settled = new WeakSet<Call>();
const busy = () => new BrokerError('STORE_BUSY', 'store: timed out waiting for the connection');
const unavailable = () => new BrokerError('STORE_UNAVAILABLE', 'store: the database cannot be reached');

/** Lets the writer's promise callbacks run. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

async function land(call: Call): Promise<void> {
  settled.add(call);
  call.resolve();
  await tick();
}

async function fail(call: Call, err: unknown): Promise<void> {
  settled.add(call);
  call.reject(err);
  await tick();
}

/** Timers the test fires: each scheduled callback with its delay. */
class ManualTimers implements WriterTimers {
  private next = 1;
  readonly scheduled = new Map<number, { fn: () => void; ms: number }>();
  readonly delays: number[] = [];

  setTimeout(fn: () => void, ms: number): unknown {
    const handle = this.next++;
    this.scheduled.set(handle, { fn, ms });
    this.delays.push(ms);
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.scheduled.delete(handle as number);
  }

  /** Fires every timer scheduled so far. */
  async fireAll(): Promise<void> {
    const due = [...this.scheduled];
    this.scheduled.clear();
    for (const [, { fn }] of due) fn();
    await tick();
  }
}

class Lines implements PresenceWriterLogger {
  readonly lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> = [];
  debug(obj: object, msg = ''): void {
    this.lines.push({ level: 'debug', msg, obj: obj as Record<string, unknown> });
  }
  info(obj: object, msg = ''): void {
    this.lines.push({ level: 'info', msg, obj: obj as Record<string, unknown> });
  }
  warn(obj: object, msg = ''): void {
    this.lines.push({ level: 'warn', msg, obj: obj as Record<string, unknown> });
  }
  error(obj: object, msg = ''): void {
    this.lines.push({ level: 'error', msg, obj: obj as Record<string, unknown> });
  }
  at(level: string): string[] {
    return this.lines.filter((l) => l.level === level).map((l) => l.msg);
  }
}

function rig(options: { maxInFlight?: number; random?: () => number } = {}) {
  const store = new FakeStore();
  const timers = new ManualTimers();
  const logger = new Lines();
  const writer = new PresenceWriter({ store, logger, timers, backoff: { initialMs: 100, maxMs: 1000 }, random: options.random ?? (() => 0.5), maxInFlight: options.maxInFlight ?? 4 });
  return { store, timers, logger, writer };
}

let seq = 0;
/** An update whose lastSeen numbers it, so that tests can tell updates apart. */
function online(n = ++seq): DevicePresence {
  return { online: true, since: new Date(n), remoteAddr: '192.0.2.7', lastSeen: new Date(n), node: 'node_a' };
}
function offline(n = ++seq): DevicePresence {
  return { online: false, since: null, remoteAddr: null, lastSeen: new Date(n), node: 'node_a' };
}

test('ok/a write that fails STORE_BUSY is retried with backoff until it lands; one line says so', async (t) => {
  const { store, timers, logger, writer } = rig();
  const update = online();
  writer.update('dev_a', update);
  for (let i = 0; i < 3; i++) {
    t.is(store.open().length, 1);
    await fail(store.open()[0]!, i === 1 ? unavailable() : busy());
    t.is(store.open().length, 0, 'nothing is written before the backoff ends');
    t.is(writer.stats().pending, 1);
    await timers.fireAll();
  }
  await land(store.open()[0]!);
  t.is(store.calls.length, 4);
  t.deepEqual(store.landed.get('dev_a'), update);
  t.deepEqual(writer.stats(), { pending: 0, retried: 3, dropped: 0 });
  t.deepEqual(logger.at('warn'), ['presence writes failing (the store is busy or away); retrying with backoff']);
  const caughtUp = logger.lines.find((l) => l.level === 'info');
  t.is(caughtUp?.msg, 'presence writes caught up after store failures');
  t.like(caughtUp?.obj, { failedWrites: 3, landedAfterRetry: 1, code: 'STORE_BUSY' });
  t.deepEqual(logger.at('error'), []);
});

test('ok/the backoff doubles up to its cap, with jitter', async (t) => {
  let r = 0;
  const randoms = [0, 0.999, 0.5];
  const { store, timers, writer } = rig({ random: () => randoms[r++ % randoms.length]! });
  writer.update('dev_a', online());
  for (let i = 0; i < 6; i++) {
    await fail(store.open()[0]!, busy());
    await timers.fireAll();
  }
  // Steps 100, 200, 400, 800, 1000, 1000; each delay is half the step plus up to half of it again.
  const steps = [100, 200, 400, 800, 1000, 1000];
  t.deepEqual(timers.delays.map((d, i) => d >= steps[i]! / 2 && d < steps[i]!), steps.map(() => true), String(timers.delays));
  t.is(timers.delays[0], 50);
  t.is(timers.delays[3], 400);
  t.is(timers.delays[5], 750, 'capped at 1000: half of it plus half of half');
  t.true(timers.delays[1]! > 199, 'random 0.999 is nearly the whole step');
});

test('ok/online then offline before the write starts: only the last is written', async (t) => {
  const { store, writer } = rig({ maxInFlight: 1 });
  writer.update('dev_blocker', online());
  const last = offline();
  writer.update('dev_a', online());
  writer.update('dev_a', last);
  t.deepEqual(writer.stats().pending, 2);
  await land(store.open()[0]!);
  t.is(store.open().length, 1);
  t.is(store.open()[0]!.id, 'dev_a');
  t.deepEqual(store.open()[0]!.presence, last);
  await land(store.open()[0]!);
  t.is(store.calls.filter((c) => c.id === 'dev_a').length, 1);
  t.is(writer.stats().pending, 0);
});

test('ok/updates that come while a write is in flight wait for it, then only the latest is written', async (t) => {
  const { store, writer } = rig();
  const first = online();
  writer.update('dev_a', first);
  writer.update('dev_a', offline());
  const last = online();
  writer.update('dev_a', last);
  t.is(store.open().length, 1, 'one write in flight per device');
  t.deepEqual(store.open()[0]!.presence, first);
  await land(store.open()[0]!);
  t.is(store.open().length, 1);
  t.deepEqual(store.open()[0]!.presence, last);
  await land(store.open()[0]!);
  t.deepEqual(store.calls.map((c) => c.presence), [first, last]);
  t.deepEqual(store.landed.get('dev_a'), last);
});

test('ok/superseded while in flight: the failed older update is not retried, the newer one is (after the backoff)', async (t) => {
  const { store, timers, writer } = rig();
  const old = online();
  writer.update('dev_a', old);
  const newer = offline();
  writer.update('dev_a', newer);
  await fail(store.open()[0]!, busy());
  t.is(store.open().length, 0, 'the newer update waits for the backoff too');
  await timers.fireAll();
  t.deepEqual(store.open().map((c) => c.presence), [newer]);
  await land(store.open()[0]!);
  await timers.fireAll();
  t.deepEqual(store.calls.map((c) => c.presence), [old, newer]);
  t.deepEqual(store.landed.get('dev_a'), newer);
  t.deepEqual(writer.stats(), { pending: 0, retried: 1, dropped: 0 });
});

test('ok/superseded while waiting for a retry: the retry writes the newer update', async (t) => {
  const { store, timers, writer } = rig();
  writer.update('dev_a', online());
  await fail(store.open()[0]!, busy());
  const newer = offline();
  writer.update('dev_a', newer);
  t.is(store.open().length, 0, 'the backoff holds');
  await timers.fireAll();
  t.deepEqual(store.open().map((c) => c.presence), [newer]);
  await land(store.open()[0]!);
  t.deepEqual(store.landed.get('dev_a'), newer);
});

test('ok/one device\'s writes land in the order of its updates, whatever fails (a random run)', async (t) => {
  const { store, timers, writer } = rig({ maxInFlight: 3 });
  let state = 12345;
  const rand = (): number => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
  const devices = ['dev_a', 'dev_b', 'dev_c', 'dev_d', 'dev_e'];
  const latest = new Map<string, DevicePresence>();
  for (let step = 0; step < 400; step++) {
    const r = rand();
    if (r < 0.4) {
      const id = devices[Math.floor(rand() * devices.length)]!;
      const p = rand() < 0.5 ? online() : offline();
      latest.set(id, p);
      writer.update(id, p);
    } else if (r < 0.85 && store.open().length > 0) {
      const call = store.open()[Math.floor(rand() * store.open().length)]!;
      if (rand() < 0.5) await land(call);
      else await fail(call, busy());
    } else {
      await timers.fireAll();
    }
    t.true(store.maxInFlight <= 3);
  }
  // Drain: land everything.
  for (let i = 0; i < 100 && writer.stats().pending > 0; i++) {
    for (const call of store.open()) await land(call);
    await timers.fireAll();
  }
  t.is(writer.stats().pending, 0);
  for (const id of devices) {
    if (latest.has(id)) t.deepEqual(store.landed.get(id), latest.get(id), id);
    // The writes of one device, as sent, never go back in time.
    const sent = store.calls.filter((c) => c.id === id).map((c) => c.presence.lastSeen.getTime());
    t.deepEqual(sent, [...sent].sort((a, b) => a - b), id);
  }
  t.true(writer.stats().retried > 0, 'the run did retry');
});

test('ok/at most maxInFlight writes at once; the rest queue and all land', async (t) => {
  const { store, writer } = rig({ maxInFlight: 3 });
  for (let i = 0; i < 20; i++) writer.update(`dev_${i}`, online());
  t.is(store.open().length, 3);
  t.is(writer.stats().pending, 20);
  while (store.open().length > 0) {
    t.true(store.open().length <= 3);
    await land(store.open()[0]!);
  }
  t.is(store.maxInFlight, 3);
  t.is(store.landed.size, 20);
  t.is(writer.stats().pending, 0);
});

test('fail/a permanent error is logged and the update dropped, not retried', async (t) => {
  const { store, timers, logger, writer } = rig();
  writer.update('dev_a', online());
  await fail(store.open()[0]!, new BrokerError('INTERNAL', 'store: constraint'));
  t.is(timers.scheduled.size, 0);
  await timers.fireAll();
  t.is(store.calls.length, 1);
  t.deepEqual(writer.stats(), { pending: 0, retried: 0, dropped: 1 });
  t.deepEqual(logger.at('error'), ['presence write failed; the update is dropped']);
  t.like(logger.lines.find((l) => l.level === 'error')?.obj, { deviceId: 'dev_a', code: 'INTERNAL' });
  // A later update of the device is written as usual.
  const next = offline();
  writer.update('dev_a', next);
  await land(store.open()[0]!);
  t.deepEqual(store.landed.get('dev_a'), next);
});

test('fail/a permanent error after retries ends the episode: a newer update still goes out', async (t) => {
  const { store, timers, writer } = rig();
  writer.update('dev_a', online());
  await fail(store.open()[0]!, busy());
  await timers.fireAll();
  const newer = offline();
  writer.update('dev_a', newer);
  await fail(store.open()[0]!, new TypeError('bug'));
  t.deepEqual(store.open().map((c) => c.presence), [newer], 'the newer update is not held back by the dropped one');
  await land(store.open()[0]!);
  t.deepEqual(writer.stats(), { pending: 0, retried: 1, dropped: 1 });
});

test('ok/close writes a retry waiting for its backoff at once and resolves when everything landed', async (t) => {
  const { store, timers, writer } = rig();
  writer.update('dev_a', online());
  await fail(store.open()[0]!, busy());
  const last = offline();
  writer.update('dev_a', last);
  writer.update('dev_b', offline());
  let result: unknown;
  const closing = writer.close(5000).then((r) => (result = r));
  await tick();
  t.deepEqual(store.open().map((c) => c.id).sort(), ['dev_a', 'dev_b'], 'no waiting for the backoff at shutdown');
  t.is(result, undefined);
  for (const call of store.open()) await land(call);
  await closing;
  t.deepEqual(result, { flushed: true, left: 0 });
  t.deepEqual(store.landed.get('dev_a'), last);
  t.is(timers.scheduled.size, 0, 'no timer left behind');
});

test('fail/close gives up after its bound when the store does not answer; later updates are not written', async (t) => {
  const { store, timers, logger, writer } = rig();
  writer.update('dev_a', offline());
  writer.update('dev_b', offline());
  const closing = writer.close(5000);
  await tick();
  t.is(store.open().length, 2);
  t.deepEqual([...timers.scheduled.values()].map((s) => s.ms), [5000]);
  await timers.fireAll(); // the bound
  t.deepEqual(await closing, { flushed: false, left: 2 });
  t.deepEqual(logger.at('warn'), ['presence updates not written by shutdown; the next start marks the devices this node held offline']);
  writer.update('dev_c', offline());
  await fail(store.open()[0]!, busy());
  await tick();
  t.is(timers.scheduled.size, 0, 'no retry after close');
  t.is(store.calls.length, 2);
  t.is(writer.stats().dropped, 3);
  t.deepEqual(await writer.close(5000), { flushed: false, left: 2 }, 'close again: the same answer');
});

test('ok/close with nothing pending resolves at once', async (t) => {
  const { timers, writer } = rig();
  t.deepEqual(await writer.close(5000), { flushed: true, left: 0 });
  t.is(timers.scheduled.size, 0);
});
