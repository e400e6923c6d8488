/**
 * The other end of the node-to-node link: this node asking the node that
 * holds a device's tunnel to connect one of its ports (relay-server.ts).
 * One SSH connection per peer node, made when first needed and kept while
 * it lives; each relayed connection is one direct-tcpip channel on it.
 *
 * The peer is believed only when (1) the host key it proves in the key
 * exchange is the relay key the registry pins for it, and (2) the
 * certificate in its banner is one the cluster's user CA signed for that
 * node (node:<id>) and that key. This node logs in with its own node
 * certificate. Every wait is bounded: a peer that does not answer is a
 * DEVICE_OFFLINE for the operator, never a hang.
 *
 * ssh2 1.17's client announces a certificate but signs in the form OpenSSH
 * refuses (agent/ssh2-cert-auth.ts has the shim for sshd); the relay server
 * is ours and, like the gateway (userauth.ts), takes both forms, so the
 * plain client is used here.
 */
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { AuthHandlerMiddleware, Client, ClientChannel, ParsedKey } from 'ssh2';
import { ED25519_CERT, encodePrivateKey, parseCertificateLine, publicKeyBlob, type KeyPair, type PublicKey } from '../../ca/index.js';
import { ChannelStream } from './forwards.js';
import { checkNodeCertificate, parseRelayStatus, type NodeCertDeps } from './relay-authorize.js';
import type { GatewayLogger } from './types.js';

/** A node to relay through, as the registry has it. */
export interface RelayPeer {
  readonly id: string;
  /** host:port of its relay endpoint. */
  readonly host: string;
  readonly port: number;
  /** The relay key the registry pins for it. */
  readonly relayKey: PublicKey;
}

export interface RelayClientDeps {
  readonly nodeId: string;
  readonly key: KeyPair;
  /** This node's current relay certificate, one OpenSSH line. */
  certificateLine(): string;
  readonly certDeps: NodeCertDeps;
  readonly clock: () => Date;
  readonly logger: GatewayLogger;
  /** Connecting and logging in to a peer (default 5 s). */
  readonly connectTimeoutMs?: number;
  /** A peer's answer to one relay request (default 15 s). */
  readonly answerTimeoutMs?: number;
}

/** Why a relayed connection was not made: the peer's code (DEVICE_OFFLINE, PORT_NOT_OWNED, …) or this side's (NODE_UNREACHABLE, RELAY_PEER_UNVERIFIED, RELAY_TIMEOUT, RELAY_PROTOCOL). */
export class RelayDialError extends Error {
  override name = 'RelayDialError';
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

const MAX_STATUS_LINE = 128;

export class RelayClient {
  private readonly links = new Map<string, Promise<Client>>();
  private closed = false;

  constructor(private readonly deps: RelayClientDeps) {}

  /** A stream to PORT of DEVICEID through PEER; rejects with RelayDialError. */
  async dial(peer: RelayPeer, deviceId: string, port: number, origin: { address: string; port: number }): Promise<Duplex> {
    const client = await this.link(peer);
    const channel = await new Promise<ClientChannel>((resolve, reject) => {
      client.forwardOut(origin.address, origin.port, deviceId, port, (err, ch) => (err ? reject(new RelayDialError('NODE_UNREACHABLE', `node ${peer.id} refused the relay channel: ${err.message}`)) : resolve(ch)));
    });
    return this.readAnswer(peer, channel);
  }

  /** The channel's first line; then the channel as a stream, with whatever followed the line still to be read. */
  private readAnswer(peer: RelayPeer, channel: ClientChannel): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      let buffered = Buffer.alloc(0);
      const fail = (code: string, message: string): void => {
        cleanup();
        channel.close();
        reject(new RelayDialError(code, message));
      };
      const timer = setTimeout(() => fail('RELAY_TIMEOUT', `node ${peer.id} did not answer the relay request in time`), this.deps.answerTimeoutMs ?? 15_000);
      const onData = (chunk: Buffer): void => {
        buffered = Buffer.concat([buffered, chunk]);
        const nl = buffered.indexOf(0x0a);
        if (nl < 0) {
          if (buffered.length > MAX_STATUS_LINE) fail('RELAY_PROTOCOL', `node ${peer.id} sent no relay answer`);
          return;
        }
        const status = parseRelayStatus(buffered.subarray(0, nl).toString('latin1'));
        if (!status) return fail('RELAY_PROTOCOL', `node ${peer.id} sent no relay answer`);
        if (status.code !== null) return fail(status.code, `node ${peer.id} refused: ${status.code}`);
        cleanup();
        channel.pause();
        const stream = new ChannelStream(channel);
        const rest = buffered.subarray(nl + 1);
        if (rest.length > 0) stream.unshift(rest);
        resolve(stream);
      };
      const onClose = (): void => fail('NODE_UNREACHABLE', `node ${peer.id} closed the relay channel without an answer`);
      function cleanup(): void {
        clearTimeout(timer);
        channel.off('data', onData);
        channel.off('close', onClose);
      }
      channel.on('data', onData);
      channel.once('close', onClose);
      channel.on('error', () => undefined);
    });
  }

  /** The live connection to PEER, or a new one. */
  private link(peer: RelayPeer): Promise<Client> {
    if (this.closed) return Promise.reject(new RelayDialError('NODE_UNREACHABLE', 'the relay client is closed'));
    const key = `${peer.id}|${peer.host}|${peer.port}|${peer.relayKey.toString('base64')}`;
    let link = this.links.get(key);
    if (!link) {
      link = this.connect(peer, () => this.links.delete(key));
      this.links.set(key, link);
      link.catch(() => this.links.delete(key));
    }
    return link;
  }

  private connect(peer: RelayPeer, onGone: () => void): Promise<Client> {
    const client = new ssh2.Client();
    const { deps } = this;
    let hostKey: Buffer | undefined;
    let verified = false;
    let refusal: RelayDialError | undefined;
    return new Promise<Client>((resolve, reject) => {
      const fail = (err: RelayDialError): void => {
        refusal ??= err;
        client.end();
        reject(refusal);
      };
      client.on('banner', (message: string) => {
        const line = message.trim();
        let verdict: ReturnType<typeof checkNodeCertificate> | undefined;
        try {
          verdict = checkNodeCertificate(parseCertificateLine(line), deps.clock(), deps.certDeps);
        } catch {
          verdict = undefined;
        }
        if (!verdict?.ok) return fail(new RelayDialError('RELAY_PEER_UNVERIFIED', `node ${peer.id} presented no certificate the cluster CA signed${verdict ? ` (${verdict.reason})` : ''}`));
        if (verdict.identity.nodeId !== peer.id || !hostKey || !publicKeyBlob(verdict.identity.publicKey).equals(hostKey)) {
          return fail(new RelayDialError('RELAY_PEER_UNVERIFIED', `the certificate at ${peer.host}:${peer.port} is not node ${peer.id}'s for the key it answered with`));
        }
        verified = true;
      });
      client.once('ready', () => {
        if (!verified) return fail(new RelayDialError('RELAY_PEER_UNVERIFIED', `node ${peer.id} presented no node certificate`));
        deps.logger.info({ nodeId: peer.id, address: `${peer.host}:${peer.port}` }, 'relay: connected to node');
        resolve(client);
      });
      client.on('error', (err: Error & { level?: string }) => {
        if (err.level === 'client-authentication') return fail(new RelayDialError('RELAY_REFUSED', `node ${peer.id} refused this node's relay certificate`));
        fail(refusal ?? new RelayDialError('NODE_UNREACHABLE', `cannot reach node ${peer.id} at ${peer.host}:${peer.port}: ${err.message}`));
      });
      client.once('close', () => {
        onGone();
        fail(refusal ?? new RelayDialError('NODE_UNREACHABLE', `node ${peer.id} closed the relay connection`));
      });
      client.connect({
        host: peer.host,
        port: peer.port,
        username: `node:${deps.nodeId}`,
        readyTimeout: deps.connectTimeoutMs ?? 5000,
        keepaliveInterval: 15_000,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          hostKey = key;
          if (key.equals(publicKeyBlob(peer.relayKey))) return true;
          refusal = new RelayDialError('RELAY_PEER_UNVERIFIED', `node ${peer.id} at ${peer.host}:${peer.port} does not have its registered relay key`);
          return false;
        },
        authHandler: onceWithCertificate(`node:${deps.nodeId}`, certificateKey(deps.key, deps.certificateLine())),
      });
      // Small, latency-bound packets (a channel open, then its answer): Nagle against the peer's delayed ACK would add tens of ms per relayed connection.
      client.setNoDelay(true);
    });
  }

  close(): void {
    this.closed = true;
    for (const link of this.links.values()) link.then((c) => c.end(), () => undefined);
    this.links.clear();
  }
}

/** Logs in once with KEY (a certificate), then gives up: ssh2 fails with a client-authentication error. */
function onceWithCertificate(username: string, key: ParsedKey): AuthHandlerMiddleware {
  let tried = false;
  return (_methodsLeft, _partialSuccess, next) => {
    if (tried) return next(false as never);
    tried = true;
    next({ type: 'publickey', username, key });
  };
}

/**
 * KEY as ssh2's client announces it with a certificate: ssh2's parseKey()
 * passes on objects that carry its private "parsed" marker, so this one
 * inherits it (and the signing) from the real key and shows the certificate.
 */
function certificateKey(key: KeyPair, certificateLine: string): ParsedKey {
  const blob = Buffer.from(certificateLine.trim().split(/\s+/)[1] ?? '', 'base64');
  const parsed = ssh2.utils.parseKey(encodePrivateKey(key));
  if (parsed instanceof Error) throw parsed;
  const plain = Array.isArray(parsed) ? (parsed[0] as ParsedKey) : parsed;
  return Object.create(plain, { type: { value: ED25519_CERT }, getPublicSSH: { value: () => blob } }) as ParsedKey;
}
