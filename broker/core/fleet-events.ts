/**
 * Device changes inside one broker process: a tunnel up or down, a
 * revocation, new labels. The console's live view (GET /v1/events) listens;
 * the SSH side's presence writes, the revocation hook and the label route
 * announce. Listeners get device ids only and read the store themselves, so
 * a missed or merged announcement costs nothing but a refresh.
 */
import { EventEmitter } from 'node:events';

export class FleetEvents {
  private readonly emitter = new EventEmitter();

  constructor() {
    // Every open console tab listens; the server bounds how many (routes-console.ts).
    this.emitter.setMaxListeners(0);
  }

  /** Announces that the devices IDS changed. */
  devicesChanged(...ids: string[]): void {
    if (ids.length > 0) this.emitter.emit('devices', ids);
  }

  /** Calls LISTENER with the ids of changed devices until the returned function is called. */
  onDevicesChanged(listener: (ids: readonly string[]) => void): () => void {
    this.emitter.on('devices', listener);
    return () => this.emitter.off('devices', listener);
  }

  listenerCount(): number {
    return this.emitter.listenerCount('devices');
  }
}
