/** Small network probes the fixtures share. */
import { createHash } from 'node:crypto';
import { connect, createServer } from 'node:net';

/** Whether something accepts TCP connections on 127.0.0.1:PORT. */
export function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Hex SHA-256 of DATA: payloads are compared by digest, not byte by byte in a log. */
export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A port free on 127.0.0.1 right now (the kernel picks it; someone else may take it before it is used). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
