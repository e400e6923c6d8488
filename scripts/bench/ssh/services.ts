/**
 * The device's services, on loopback in the bench process: a sink that
 * counts what it receives, a source that sends a transfer on every
 * connection, and an echo server. Tunnels point at them.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';

export interface Services {
  /** Counts what it receives; resolves the waiter when a connection ends. */
  readonly sink: number;
  /** Sends the run's transfer size on every connection, then ends. */
  readonly source: number;
  readonly echo: number;
  nextSinkEnd(): Promise<number>;
  close(): Promise<void>;
}

const CHUNK = randomBytes(1024 * 1024);

/** Writes TOTAL bytes to SOCKET as fast as it drains, then ends it. */
export function writeBytes(socket: Socket, total: number): void {
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!socket.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        socket.once('drain', pump);
        return;
      }
    }
    socket.end();
  };
  pump();
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

export async function startServices(transferBytes: number): Promise<Services> {
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  let waiter: ((bytes: number) => void) | undefined;
  const sink = createServer((s) => {
    track(s);
    let bytes = 0;
    s.on('data', (c: Buffer) => (bytes += c.length));
    s.on('end', () => {
      s.end();
      waiter?.(bytes);
    });
  });
  const source = createServer((s) => {
    track(s);
    writeBytes(s, transferBytes);
  });
  const echo = createServer((s) => {
    track(s);
    s.setNoDelay(true);
    s.pipe(s);
  });
  const servers = [sink, source, echo];
  const [sinkPort, sourcePort, echoPort] = [await listen(sink), await listen(source), await listen(echo)];
  return {
    sink: sinkPort!,
    source: sourcePort!,
    echo: echoPort!,
    nextSinkEnd: () => new Promise((resolve) => (waiter = resolve)),
    close: async () => {
      for (const s of sockets) s.destroy();
      await Promise.all(servers.map((srv) => new Promise<void>((resolve) => srv.close(() => resolve()))));
    },
  };
}
