/**
 * A small JSON client for the broker's HTTP API. With a pin, the TLS
 * connection is made and its public key checked BEFORE any request byte
 * (token, API key, signature) is written; no CA store is consulted. Without a
 * pin, an https URL is verified against the system CAs and http is plain.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { tlsPinOfSpki } from '../ca/index.js';

export interface ApiClientOptions {
  readonly baseUrl: string;
  /** "sha256//BASE64" of the broker's TLS public key. */
  readonly pin?: string;
  /** Bearer API key (operators, provisioners). */
  readonly apiKey?: string;
  readonly timeoutMs?: number;
}

/** A refusal from the broker (code from its JSON error) or a transport failure (code PIN_MISMATCH, UNREACHABLE, …). */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly code: string,
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

function connectPinned(url: URL, pin: string, timeoutMs: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const socket = tlsConnect({
      host,
      port: Number(url.port || 443),
      servername: isIP(host) ? undefined : host,
      rejectUnauthorized: false, // trust comes from the pin, checked below before any write
      ALPNProtocols: ['http/1.1'],
    });
    socket.setTimeout(timeoutMs, () => socket.destroy(new ApiError('UNREACHABLE', `no TLS handshake with ${url.host} within ${timeoutMs} ms`)));
    socket.once('error', (err) => reject(err instanceof ApiError ? err : new ApiError('UNREACHABLE', `cannot reach ${url.host}: ${err.message}`)));
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate();
      if (!cert || !cert.pubkey || tlsPinOfSpki(cert.pubkey) !== pin) {
        socket.destroy();
        reject(new ApiError('PIN_MISMATCH', `the broker at ${url.host} does not present the pinned TLS key`));
        return;
      }
      socket.setTimeout(0);
      resolve(socket);
    });
  });
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

  let socket: TLSSocket | undefined;
  if (url.protocol === 'https:' && options.pin) socket = await connectPinned(url, options.pin, timeoutMs);
  const send = url.protocol === 'https:' && !socket ? httpsRequest : httpRequest;
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = send(url, { method, headers, agent: false, ...(socket ? { createConnection: () => socket } : {}) }, resolve);
    req.setTimeout(timeoutMs, () => req.destroy(new ApiError('TIMEOUT', `${method} ${url.pathname} timed out after ${timeoutMs} ms`)));
    req.once('error', (err) => reject(err instanceof ApiError ? err : new ApiError('UNREACHABLE', `cannot reach ${url.host}: ${err.message}`)));
    req.end(payload);
  });
  const data = await readBody(res);
  const isJson = /^application\/json/.test(res.headers['content-type'] ?? '');
  const parsed: unknown = isJson && data.length ? JSON.parse(data.toString('utf8')) : data;
  if ((res.statusCode ?? 500) >= 400) {
    const error = (parsed as { error?: { code?: string; message?: string } }).error;
    throw new ApiError(error?.code ?? `HTTP_${res.statusCode}`, error?.message ?? `HTTP ${res.statusCode}`, res.statusCode);
  }
  return parsed as T;
}
