import type { DeviceRecord, Store } from './types.js';

/** Every active device, a page of 1,000 at a time. */
export async function* activeDevices(store: Pick<Store, 'listDevices'>): AsyncGenerator<DeviceRecord> {
  let cursor: string | null = null;
  do {
    const page = await store.listDevices({ status: 'active', limit: 1000, cursor });
    yield* page.items;
    cursor = page.nextCursor;
  } while (cursor);
}
