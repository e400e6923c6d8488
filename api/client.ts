/**
 * A small JSON client for the broker's HTTP API. With a pin, the TLS
 * connection is made and its public key checked BEFORE any request byte
 * (token, API key, signature) is written; no CA store is consulted. Without a
 * pin, an https URL is verified against the system CAs and http is plain.
 */
import { request as httpRequest, type IncomingMessage, type RequestOptions as HttpRequestOptions } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { tlsPinOfSpki } from '../ca/index.js';
import { pinServerName } from './device.js';
import { ApiError, type ErrorResponse } from './errors.js';

export interface ApiClientOptions {
  readonly baseUrl: string;
  /** "sha256//BASE64" of the broker's TLS public key. */
  readonly pin?: string;
  /**
   * More pins accepted beside `pin` (an agent's stored trust set: the TLS
   * keys of a rotation's overlap). Only with `pin`: they extend a pinning,
   * they never replace the system CAs' check of an unpinned URL.
   */
  readonly pins?: readonly string[];
  /** Bearer API key (operators, provisioners). */
  readonly apiKey?: string;
  readonly timeoutMs?: number;
}

/**
 * An https.Agent whose connections are handed to the request only after the
 * peer's public key matched the pin: the request (token, API key, signature)
 * is never written to an unverified peer.
 */
class PinnedAgent extends HttpsAgent {
  constructor(
    private readonly pins: readonly string[],
    private readonly timeoutMs: number,
  ) {
    super({ keepAlive: false });
  }

  override createConnection(options: HttpRequestOptions, callback?: (err: Error | null, stream: Duplex) => void): undefined {
    const host = String(options.host ?? 'localhost');
    // First the URL's own name; then, if the key does not match, each pin's server name (pinServerName):
    // a broker keeps a rotation's next and retired TLS identities under those (docs/rotation.md), so an
    // agent that slept through an api-tls rotation still finds the key it pins. Nothing is sent before a match.
    const names = [isIP(host) ? undefined : host, ...this.pins.map(pinServerName).filter((n): n is string => n !== null)];
    const attempt = (index: number): void => {
      const socket = tlsConnect({ ...(options as TlsConnectionOptions), rejectUnauthorized: false, servername: names[index], ALPNProtocols: ['http/1.1'] });
      let done = false;
      const finish = (err: Error | null): void => {
        if (done) return;
        done = true;
        socket.setTimeout(0);
        if (err) socket.destroy();
        callback?.(err, socket);
      };
      socket.setTimeout(this.timeoutMs, () => finish(new ApiError('UNREACHABLE', `no TLS handshake with ${host} within ${this.timeoutMs} ms`)));
      socket.once('error', (err) => finish(new ApiError('UNREACHABLE', `cannot reach ${host}: ${err.message}`)));
      socket.once('secureConnect', () => {
        const cert = socket.getPeerCertificate();
        if (cert && cert.pubkey && this.pins.includes(tlsPinOfSpki(cert.pubkey))) return finish(null);
        if (index + 1 < names.length) {
          done = true;
          socket.setTimeout(0);
          socket.destroy();
          return attempt(index + 1);
        }
        finish(new ApiError('PIN_MISMATCH', `the broker at ${host} does not present the pinned TLS key; nothing was sent. Check the pin (tls/api.pin in the broker's data directory); if the broker's TLS key was replaced on purpose, pin the new one`));
      });
    };
    attempt(0);
    return undefined;
  }
}

/**
 * The certificate checks of an unpinned https request (Node's TLS error
 * codes): the broker answered, but with a certificate no system CA vouches
 * for, which is what its own self-signed one is. The fix is its pin.
 */
const UNTRUSTED_CERTIFICATE = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT', 'CERT_HAS_EXPIRED', 'CERT_UNTRUSTED', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function connectionError(url: URL, err: NodeJS.ErrnoException): ApiError {
  if (url.protocol === 'https:' && err.code !== undefined && UNTRUSTED_CERTIFICATE.has(err.code)) {
    return new ApiError(
      'TLS_PIN_REQUIRED',
      `the broker at ${url.host} answered, but its TLS certificate is not vouched for by a system CA (${err.code}); nothing was sent. ` +
        "Pin its key: --pin sha256//… (or CERTUNNEL_API_PIN; the agent's broker.pin), printed by certunnel init and kept in tls/api.pin in the broker's data directory",
    );
  }
  return new ApiError('UNREACHABLE', `cannot reach ${url.host}: ${err.message}`);
}

async function readBody(res: IncomingMessage, limit = 16 * 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new ApiError('RESPONSE_TOO_LARGE', 'the broker sent an oversized response');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** apiRequest's shape: what callers take as a dependency, so tests can hand them a fake. */
export type ApiCall = <T>(options: ApiClientOptions, method: string, path: string, body?: unknown) => Promise<T>;

/** Sends one request and returns the parsed JSON (or raw bytes for non-JSON). Throws ApiError. */
export async function apiRequest<T>(options: ApiClientOptions, method: string, path: string, body?: unknown): Promise<T> {
  const url = new URL(path, options.baseUrl);
  const timeoutMs = options.timeoutMs ?? 15_000;
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string> = { accept: 'application/json' };
  if (payload) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(payload.length);
  }
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;

  const https = url.protocol === 'https:';
  const agent = https && options.pin ? new PinnedAgent([options.pin, ...(options.pins ?? [])], timeoutMs) : false;
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(url, { method, headers, agent }, resolve);
    req.setTimeout(timeoutMs, () => req.destroy(new ApiError('TIMEOUT', `${method} ${url.pathname} timed out after ${timeoutMs} ms`)));
    req.once('error', (err) => reject(err instanceof ApiError ? err : connectionError(url, err)));
    req.end(payload);
  });
  const data = await readBody(res);
  const isJson = /^application\/json/.test(res.headers['content-type'] ?? '');
  const parsed: unknown = isJson && data.length ? JSON.parse(data.toString('utf8')) : data;
  if ((res.statusCode ?? 500) >= 400) {
    const error = (parsed as { error?: Partial<ErrorResponse['error']> }).error;
    throw new ApiError(error?.code ?? `HTTP_${res.statusCode}`, error?.message ?? `HTTP ${res.statusCode}`, res.statusCode);
  }
  return parsed as T;
}
