/**
 * Moving bytes: a device's remote forward (a listener on 127.0.0.1:<port>
 * whose connections travel to the device in forwarded-tcpip channels,
 * RFC 4254 section 7.2) and the relay between one TCP socket and one SSH
 * channel, shared with operators' direct-tcpip channels.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { Channel, Connection } from 'ssh2';
import { TUNNEL_HOST } from '../../api/index.js';
import type { ByteCounters } from './stats.js';

const EMPTY = Buffer.alloc(0);

/**
 * Relays SOCKET (a TCP socket, or any stream: the node-to-node link's) <-> CHANNEL with backpressure both ways and half-close.
 *
 * pipe() pauses the source whenever the destination's buffer is full:
 * ssh2's channel buffers up to one window (RFC 4254 section 5.2) and only
 * sends as much as the peer's window allows, and when we stop reading from
 * the channel ssh2 stops sending SSH_MSG_CHANNEL_WINDOW_ADJUST, so the
 * device stops sending too. Nothing is buffered without bound.
 *
 * The socket -> channel pipe does not end the channel: ssh2's server-side
 * Channel sends CHANNEL_CLOSE on end(), which would drop the reply to a
 * client that half-closes. A TCP FIN becomes CHANNEL_EOF instead (RFC 4254
 * section 5.3), and the channel is closed when the socket is.
 */
export function relay(socket: Duplex, channel: Channel, bytes?: ByteCounters): void {
  if (bytes) {
    socket.on('data', (chunk: Buffer) => {
      bytes.out += chunk.length;
    });
    channel.on('data', (chunk: Buffer) => {
      bytes.in += chunk.length;
    });
  }
  socket.pipe(channel, { end: false });
  // CHANNEL_EOF only after everything written before it has gone out: an
  // empty write completes after the chunks queued ahead of it (some may be
  // waiting for window space), eof() itself would overtake them.
  socket.once('end', () => channel.write(EMPTY, () => channel.eof()));
  channel.pipe(socket);
  socket.once('close', () => {
    socket.unpipe(channel);
    channel.close();
  });
  channel.once('close', () => {
    socket.unpipe(channel);
    // Flush what the device sent, then let go of the socket even if the
    // client keeps its half open: there is no one left to read it.
    if (!socket.destroyed) socket.end(() => socket.destroy());
  });
  // Errors end the relay; they are a peer's doing, not ours.
  socket.on('error', () => socket.destroy());
  channel.on('error', () => {
    socket.destroy();
    channel.close();
  });
}

export interface RemoteForwardOptions {
  readonly conn: Connection;
  /** As the client asked, echoed in forwarded-tcpip so that it finds its forward (RFC 4254 section 7.2). */
  readonly bindAddr: string;
  readonly port: number;
  readonly bytes: ByteCounters;
}

/** A listener on 127.0.0.1:port for one device session. */
export class RemoteForward {
  private readonly relays = new Set<Socket>();
  /** Streams handed out by openChannel. */
  private readonly channels = new Set<ChannelStream>();
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly server: Server,
    private readonly options: RemoteForwardOptions,
  ) {
    server.on('connection', (socket) => this.onConnection(socket));
  }

  get port(): number {
    return this.options.port;
  }

  get activeRelays(): number {
    return this.relays.size + this.channels.size;
  }

  /** Binds 127.0.0.1:port; rejects with the listen error (EADDRINUSE, EACCES…). */
  static open(options: RemoteForwardOptions): Promise<RemoteForward> {
    // allowHalfOpen: a client's FIN is passed on as CHANNEL_EOF and the reply
    // still flows back. pauseOnConnect: nothing is read before the channel exists.
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // exclusive: never share the port with a cluster sibling.
      server.listen({ host: TUNNEL_HOST, port: options.port, exclusive: true }, () => {
        server.off('error', reject);
        server.on('error', () => undefined);
        resolve(new RemoteForward(server, options));
      });
    });
  }

  private onConnection(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    this.relays.add(socket);
    socket.once('close', () => this.relays.delete(socket));
    const { conn, bindAddr, port, bytes } = this.options;
    conn.forwardOut(bindAddr, port, socket.remoteAddress ?? TUNNEL_HOST, socket.remotePort ?? 0, (err, channel) => {
      if (err) {
        // The device could not (or would not) connect to its local service.
        socket.destroy();
        return;
      }
      if (socket.destroyed || this.closing) {
        channel.close();
        socket.destroy();
        return;
      }
      relay(socket, channel, bytes);
    });
  }

  /**
   * A forwarded-tcpip channel to the device without the loopback listener:
   * what a connection to 127.0.0.1:<port> would get, for an in-process
   * client (the HTTP proxy) that would otherwise pay two extra TCP hops.
   * ORIGIN is reported to the device as the connection's source.
   */
  openChannel(origin: { address: string; port: number }): Promise<Duplex> {
    if (this.closing) return Promise.reject(new Error('the forward is closing'));
    const { conn, bindAddr, port, bytes } = this.options;
    return new Promise((resolve, reject) => {
      conn.forwardOut(bindAddr, port, origin.address, origin.port, (err, channel) => {
        if (err) return reject(err);
        if (this.closing) {
          channel.close();
          return reject(new Error('the forward is closing'));
        }
        const stream = new ChannelStream(channel, bytes);
        this.channels.add(stream);
        stream.once('close', () => this.channels.delete(stream));
        resolve(stream);
      });
    });
  }

  /** Stops listening and drops every relayed connection at once (revocation, takeover, cancel). */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const socket of this.relays) socket.destroy();
      for (const stream of this.channels) stream.destroy();
    });
    return this.closing;
  }
}

/**
 * An SSH channel with the stream semantics node's own code expects of a
 * socket: `destroyed` and 'close' when either side goes away, pending writes
 * failed rather than left hanging when the channel closes (ssh2's Channel
 * drops writes on a closed channel without calling back). Backpressure both
 * ways: the channel is paused while the reader is full, and writes complete
 * when ssh2 has taken them (it waits for window space, RFC 4254 section 5.2).
 */
export class ChannelStream extends Duplex {
  constructor(
    private readonly channel: Channel,
    private readonly bytes?: ByteCounters,
  ) {
    super({ allowHalfOpen: false });
    channel.on('data', (chunk: Buffer) => {
      if (this.bytes) this.bytes.in += chunk.length;
      if (!this.push(chunk)) channel.pause();
    });
    channel.once('end', () => this.push(null));
    channel.once('close', () => this.destroy());
    channel.on('error', (err: Error) => this.destroy(err));
  }

  override _read(): void {
    this.channel.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.bytes) this.bytes.out += chunk.length;
    this.channel.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    // CHANNEL_EOF only after everything written before it has gone out (see relay()).
    this.channel.write(EMPTY, () => {
      this.channel.eof();
      callback();
    });
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.channel.close();
    callback(err);
  }
}
