/** Small network probes the fixtures share. */
import { createHash } from 'node:crypto';
import { connect } from 'node:net';

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
