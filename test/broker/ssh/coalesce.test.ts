import test from 'ava';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { coalesceWrites } from '../../../broker/ssh/coalesce.js';

async function socketPair(t: { teardown(fn: () => void): void }): Promise<{ sender: Socket; receiver: Socket }> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const sender = connect({ host: '127.0.0.1', port });
  await once(sender, 'connect');
  const [receiver] = await accepted;
  t.teardown(() => {
    sender.destroy();
    receiver.destroy();
    server.close();
  });
  return { sender, receiver };
}

test('writes of one event-loop turn are held until setImmediate, then leave together and in order', async (t) => {
  const { sender, receiver } = await socketPair(t);
  coalesceWrites(sender);
  const received: Buffer[] = [];
  receiver.on('data', (chunk: Buffer) => received.push(chunk));
  const writes: Array<Buffer[]> = [];
  const original = (sender as unknown as { _writev: (chunks: Array<{ chunk: Buffer }>, cb: () => void) => void })._writev.bind(sender);
  (sender as unknown as { _writev: typeof original })._writev = (chunks, cb) => {
    writes.push(chunks.map((c) => c.chunk));
    original(chunks, cb);
  };
  for (let i = 0; i < 5; i++) t.true(sender.write(Buffer.from(`packet-${i};`)));
  t.is(sender.writableCorked, 1);
  t.is(sender.writableLength, 5 * 'packet-0;'.length);
  await new Promise((resolve) => setImmediate(resolve));
  t.is(sender.writableCorked, 0);
  t.is(writes.length, 1, 'one writev for the turn');
  t.is(writes[0]!.length, 5);
  const expected = Array.from({ length: 5 }, (_, i) => `packet-${i};`).join('');
  while (Buffer.concat(received).length < expected.length) await once(receiver, 'data');
  t.is(Buffer.concat(received).toString(), expected);
});

test('each turn corks anew; backpressure still reports a full buffer', async (t) => {
  const { sender, receiver } = await socketPair(t);
  coalesceWrites(sender);
  receiver.pause();
  sender.write('first turn');
  await new Promise((resolve) => setImmediate(resolve));
  t.is(sender.writableCorked, 0);
  sender.write('second turn');
  t.is(sender.writableCorked, 1, 'a later turn corks again');
  const big = Buffer.alloc(sender.writableHighWaterMark + 1);
  t.false(sender.write(big), 'write() returns false past the high-water mark');
  await new Promise((resolve) => setImmediate(resolve));
  t.is(sender.writableCorked, 0);
});
