/**
 * A hostile device web service for the proxy tests: a raw TCP server that
 * writes whatever bytes a case asks for, chosen by the request's path
 * (`/case/<name>`), and answers `/ok` (or any other path) with a
 * well-formed 200, on the same kept-alive connection. It records every
 * request line it parsed, so a test can tell whether a smuggled request
 * reached the device.
 */
import { createServer, type Server, type Socket } from 'node:net';

/**
 * What a case does with the device's end of a connection, once it read a
 * request for /case/<name>; true when the connection goes on as HTTP (the
 * service parses the next request on it).
 */
export type HostileAnswer = (socket: Socket) => boolean | void;

export interface HostileService {
  readonly port: number;
  /** Request lines ("GET /path") the service parsed, in order. */
  readonly seen: string[];
  close(): Promise<void>;
}

export const OK_RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok';

/** Writes LINE over and over, as fast as the socket takes it, until the broker closes the connection. */
export function flood(socket: Socket, line: string): void {
  const more = (): void => {
    while (!socket.destroyed && socket.write(line));
    if (!socket.destroyed) socket.once('drain', more);
  };
  more();
}

export async function startHostileService(answers: Readonly<Record<string, HostileAnswer>>): Promise<HostileService> {
  const seen: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffered = '';
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      // Once a hostile case owns the connection, later bytes are its business (a body, or a smuggled request it ignores).
      buffered += chunk.toString('latin1');
      while (!answered) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        const [method = '', path = ''] = head.split('\r\n', 1)[0]!.split(' ');
        seen.push(`${method} ${path}`);
        const answer = path.startsWith('/case/') ? answers[path.slice('/case/'.length)] : undefined;
        if (!answer) {
          socket.write(OK_RESPONSE);
          continue;
        }
        answered = answer(socket) !== true;
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
