/**
 * The ssh2 transport (default): one ssh2 Client in this process. The
 * certificate login is the shim's (ssh2-cert-auth.ts, version-pinned); the
 * host key is checked against the trusted keys (the trust set's, or the
 * pinned one) before authentication starts (ssh2 1.17 does not negotiate
 * host certificates, so host CAs serve the openssh transport only).
 * Forwarded connections are relayed to the device's local services; a
 * service that is down gets its channel refused.
 */
import { connect as netConnect, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { ClientChannel, TcpConnectionDetails } from 'ssh2';
import { publicKeyBlob } from '../ca/index.js';
import { TUNNEL_HOST } from '../api/index.js';
import { certificateAuthHandler } from './ssh2-cert-auth.js';
import { TransportError, type ForwardSpec, type Transport, type Tunnel, type TunnelEnd, type TunnelSpec } from './transport.js';

type LeveledError = Error & { level?: string; code?: string };

function classify(err: LeveledError, hostKeyRefused: boolean): TransportError {
  if (hostKeyRefused) return new TransportError('HOST_KEY_MISMATCH', 'the server presents no host key the agent trusts');
  switch (err.level) {
    case 'client-authentication':
      return new TransportError('AUTH_REFUSED', 'the SSH server refused the device certificate');
    case 'client-timeout':
      return /keepalive/i.test(err.message)
        ? new TransportError('KEEPALIVE_TIMEOUT', 'the broker stopped answering keepalives')
        : new TransportError('TIMEOUT', err.message);
    case 'client-socket':
    case 'client-dns':
      return new TransportError('UNREACHABLE', `cannot reach the SSH server: ${err.code ?? err.message}`);
    default:
      return new TransportError('PROTOCOL', err.message);
  }
}

/** Relays one forwarded connection to the local service; refuses the channel if the service does not answer. */
function relayToService(forward: ForwardSpec, accept: () => ClientChannel, reject: () => void, sockets: Set<Socket>): void {
  const local = netConnect({ host: forward.localHost, port: forward.localPort, allowHalfOpen: true });
  sockets.add(local);
  let channel: ClientChannel | undefined;
  local.once('connect', () => {
    channel = accept();
    const ch = channel;
    ch.on('error', () => local.destroy());
    ch.once('close', () => local.destroy());
    local.once('close', () => ch.close());
    ch.pipe(local).pipe(ch);
  });
  local.on('error', () => {
    if (!channel) reject();
  });
  local.once('close', () => {
    sockets.delete(local);
    if (!channel) reject();
  });
}

function requestForward(client: ssh2.Client, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new TransportError('TIMEOUT', `no answer to the forward request for port ${port}`)), timeoutMs);
    client.forwardIn(TUNNEL_HOST, port, (err) => {
      clearTimeout(timer);
      if (err) reject(new TransportError('FORWARD_REFUSED', `the broker refused to listen on ${TUNNEL_HOST}:${port}`));
      else resolve();
    });
  });
}

/** What the client's events have said so far. */
interface SessionState {
  hostKeyRefused: boolean;
  /** The first failure counts: later ones are its consequences. */
  firstError?: TransportError;
  closing: boolean;
}

/** Wires the client's events: errors classified, forwarded connections relayed; resolves how the tunnel ended once the client is gone. */
function watchClient(client: ssh2.Client, spec: TunnelSpec, sockets: Set<Socket>, state: SessionState): Promise<TunnelEnd> {
  const byPort = new Map(spec.forwards.map((f) => [f.remotePort, f]));
  return new Promise<TunnelEnd>((resolve) => {
    client.on('error', (err: LeveledError) => {
      state.firstError ??= classify(err, state.hostKeyRefused);
    });
    client.once('close', () => {
      for (const s of sockets) s.destroy();
      if (state.closing) resolve({ code: 'CLOSED', message: 'closed by the agent' });
      else if (state.firstError) resolve({ code: state.firstError.code, message: state.firstError.message });
      else resolve({ code: 'DISCONNECTED', message: 'the broker closed the connection' });
    });
    client.on('tcp connection', (details: TcpConnectionDetails, accept, reject) => {
      const forward = byPort.get(details.destPort);
      if (!forward) return reject();
      relayToService(forward, accept, reject, sockets);
    });
  });
}

/** Connects over SOCK, authenticates with the certificate and requests every forward; rejects with why the tunnel is not up. */
function establish(client: ssh2.Client, sock: Socket, spec: TunnelSpec, state: SessionState, closed: Promise<TunnelEnd>, signal?: AbortSignal): Promise<void> {
  const trusted = (spec.acceptedHostKeys ?? [spec.hostKey]).map((k) => publicKeyBlob(k));
  return new Promise<void>((resolve, reject) => {
    const onEarlyClose = (end: TunnelEnd): void => {
      reject(new TransportError(end.code === 'DISCONNECTED' ? 'UNREACHABLE' : end.code, end.code === 'DISCONNECTED' ? 'the connection closed before the SSH session was ready' : end.message));
    };
    void closed.then(onEarlyClose);
    if (signal?.aborted) return reject(new TransportError('CLOSED', 'aborted by the agent'));
    signal?.addEventListener('abort', () => {
      state.closing = true;
      sock.destroy();
      reject(new TransportError('CLOSED', 'aborted by the agent'));
    }, { once: true });
    client.once('ready', () => {
      Promise.all(spec.forwards.map((f) => requestForward(client, f.remotePort, spec.connectTimeoutMs))).then(() => resolve(), (err: TransportError) => {
        state.firstError ??= err;
        client.end();
        reject(err);
      });
    });
    try {
      client.connect({
        sock,
        username: spec.username,
        ident: 'certunnel-agent',
        readyTimeout: spec.connectTimeoutMs,
        keepaliveInterval: spec.keepaliveIntervalMs,
        keepaliveCountMax: spec.keepaliveCountMax,
        hostVerifier: (key: Buffer) => {
          if (trusted.some((blob) => blob.equals(key))) return true;
          state.hostKeyRefused = true;
          return false;
        },
        authHandler: certificateAuthHandler(client, { username: spec.username, key: spec.key, certificate: spec.certificateLine }),
      });
    } catch (err) {
      reject(new TransportError('PROTOCOL', (err as Error).message));
    }
  });
}

async function openTunnel(spec: TunnelSpec, signal?: AbortSignal): Promise<Tunnel> {
  const client = new ssh2.Client();
  // Our own socket, so that close() can always destroy it (ssh2's destroy() does nothing once the socket is ended).
  const sock = netConnect({ host: spec.host, port: spec.port, localAddress: spec.bindAddress });
  const sockets = new Set<Socket>();
  const state: SessionState = { hostKeyRefused: false, closing: false };
  const closed = watchClient(client, spec, sockets, state);
  const tunnel: Tunnel = {
    closed,
    async close() {
      state.closing = true;
      client.end();
      // A peer that never answers our disconnect: do not wait for TCP to give up.
      const timer = setTimeout(() => sock.destroy(), 2000);
      await closed;
      clearTimeout(timer);
    },
  };
  await establish(client, sock, spec, state, closed, signal);
  return tunnel;
}

export function createSsh2Transport(): Transport {
  return { name: 'ssh2', open: openTunnel };
}
