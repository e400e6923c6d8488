/**
 * What the console's live view and its chart are fed from: the store the SSH
 * side writes presence through, wrapped so that every presence write is
 * announced (FleetEvents) once it committed, whichever SSH mode wrote it;
 * and a sample of the tunnels online every minute, kept in memory for the
 * last 24 hours (the chart on the console's Broker page; a restart starts
 * the series again).
 */
import type { TunnelSample } from '../../api/index.js';
import type { FleetEvents } from '../core/fleet-events.js';
import type { Logger } from '../telemetry/logger.js';
import type { Store } from '../store/types.js';

/** STORE, with setDeviceOnline announcing the device to EVENTS after the write. */
export function announcingPresence(store: Store, events: FleetEvents): Store {
  return new Proxy(store, {
    get(target, property, receiver) {
      if (property === 'setDeviceOnline') {
        return async (...args: Parameters<Store['setDeviceOnline']>): Promise<void> => {
          await target.setDeviceOnline(...args);
          events.devicesChanged(args[0]);
        };
      }
      const value: unknown = Reflect.get(target, property, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

export interface TunnelSampler {
  samples(): readonly TunnelSample[];
  stop(): void;
}

/** Counts the devices online now and every INTERVALMS, keeping the last KEEP samples. */
export function startTunnelSampler(o: { store: Pick<Store, 'countDevicesByStatus'>; clock: () => Date; logger: Logger; intervalMs: number; keep: number }): TunnelSampler {
  const series: TunnelSample[] = [];
  const take = (): void => {
    o.store
      .countDevicesByStatus()
      .then((counts) => {
        series.push({ at: o.clock().toISOString(), online: counts.online });
        if (series.length > o.keep) series.splice(0, series.length - o.keep);
      })
      .catch((err: unknown) => o.logger.warn({ err }, 'tunnel sample failed'));
  };
  take();
  const timer = setInterval(take, o.intervalMs);
  timer.unref();
  return { samples: () => series, stop: () => clearInterval(timer) };
}
