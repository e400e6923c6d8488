/**
 * Wire types of operator access (broker/http/routes-access.ts): POST
 * /v1/devices/:ref/operator-certificate for `certunnel ssh`, and the headers
 * GET /v1/proxy/authorize answers nginx's auth_request with.
 */
import type { PortBlockWire, SshEndpointWire } from './device.js';

export interface OperatorCertificateRequest {
  /** The operator's Ed25519 public key, an OpenSSH public key line. */
  publicKey: string;
}

export interface OperatorCertificateResponse {
  /** OpenSSH certificate line: key id operator:<name>:device:<id>, principal reach-<first>-<last>. */
  certificate: string;
  serial: string;
  principal: string;
  validAfter: string;
  validBefore: string;
  device: {
    id: string;
    name: string | null;
    ports: PortBlockWire;
    /**
     * Ports the device's tunnel forwards right now (embedded gateway), or
     * null when the broker cannot see tunnels (OpenSSH mode: sshd holds them).
     */
    forwardedPorts: number[] | null;
  };
  /** Where to connect: the broker's SSH server, its host key and host CA; username "operator". */
  ssh: SshEndpointWire;
}

/** Paths on a device hostname that the broker answers itself and never relays. */
export const RESERVED_PREFIX = '/.certunnel/';

/** GET /v1/proxy/authorize (nginx auth_request) answers with these headers. */
export const AUTHORIZE_HEADERS = {
  /** The tunnel port of the device's http slot on the broker's loopback. */
  upstreamPort: 'x-certunnel-upstream-port',
  deviceId: 'x-certunnel-device',
  /** The request's Cookie header without the broker's session cookie (empty: send none). */
  cookie: 'x-certunnel-cookie',
  /** The request's Authorization header unless it was the broker's own credential (empty: send none). */
  authorization: 'x-certunnel-authorization',
  /** On a refusal: the error code (DEVICE_OFFLINE, …). */
  error: 'x-certunnel-error',
} as const;
