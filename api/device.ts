/**
 * Wire types of the routes devices and anyone may call
 * (broker/http/routes-device.ts): POST /v1/enroll, POST /v1/renew, GET
 * /v1/ca, GET /healthz, shared by the broker, the device agent, the CLI and
 * provisioning; plus the renewal message layout both sides must build the
 * same way. The other public routes answer bytes, not JSON: GET /v1/krl the
 * KRL (application/octet-stream, PROTOCOL.krl), GET /metrics Prometheus text.
 */

export interface PortBlockWire {
  first: number;
  last: number;
}

/** How a device reaches the broker's SSH server and how it knows it is the real one. */
export interface SshEndpointWire {
  host: string;
  port: number;
  /** Any username works with the embedded gateway; sshd (OpenSSH mode) needs this one. */
  username: string;
  /** The broker's host key, an OpenSSH public key line (pin it). */
  hostKey: string;
  /** The host CA public key line; the broker's host certificate is signed by it. */
  hostCertificateAuthority: string;
}

/**
 * One address of the broker's SSH server. A fleet of several broker nodes
 * has one per node; they all present the same host key and host CA and take
 * the same username (the `ssh` endpoint's), so a device may dial any of them.
 */
export interface SshAddressWire {
  host: string;
  port: number;
}

/**
 * What a device trusts of the broker, the one in use first: its SSH host
 * keys, host CAs and API TLS pins. Outside a rotation each list holds one
 * entry (apiPins none when the broker serves plain HTTP); during a rotation
 * of that root (docs/rotation.md) the current and the next. An agent stores
 * the set it was last given and accepts any member: a host key in
 * hostKeys, a host certificate signed by one of hostCertificateAuthorities,
 * a TLS key whose pin is in apiPins. Absent from brokers before 0.5: then
 * `ssh.hostKey`, `ssh.hostCertificateAuthority` and the configured pin are
 * the whole trust.
 */
export interface TrustSetWire {
  /** OpenSSH public key lines, 1 to 4. */
  hostKeys: string[];
  /** OpenSSH public key lines, 1 to 4. */
  hostCertificateAuthorities: string[];
  /** "sha256//BASE64" pins, 0 to 4. */
  apiPins: string[];
}

/**
 * What an agent tells the broker it can do, in enrollment and renewal
 * requests (`capabilities`). Unknown strings are ignored; older agents send
 * none.
 */
export const AGENT_CAPABILITIES = {
  /** Stores `trust` from grants and accepts any member (the broker counts it as having the next trust). */
  trustSet: 'trust-set-v1',
} as const;

/** A hardware serial (enrollment, token bindings): printable ASCII without spaces. */
export const HARDWARE_SERIAL = /^[\x21-\x7e]{1,128}$/;

export interface EnrollRequest {
  token: string;
  /** The device's Ed25519 public key, an OpenSSH public key line. */
  publicKey: string;
  name?: string;
  hardwareSerial?: string;
  /** AGENT_CAPABILITIES values; absent from agents before 0.5. */
  capabilities?: string[];
}

export interface CertificateGrantWire {
  deviceId: string;
  name: string | null;
  ports: PortBlockWire;
  /** OpenSSH certificate line (ssh-ed25519-cert-v01@openssh.com …). */
  certificate: string;
  serial: string;
  validAfter: string;
  validBefore: string;
  /** Renew at or after this time (about two thirds of the validity). */
  renewAfter: string;
  /**
   * Every SSH endpoint the device may dial, the first being `ssh`'s host and
   * port; pick one at random and fail over to the others. Absent from brokers
   * before 0.4 (then `ssh` is the only one). Sent before `ssh`: a shell agent
   * that reads `"host"` with a greedy sed still finds `ssh`'s.
   */
  sshEndpoints?: SshAddressWire[];
  ssh: SshEndpointWire;
  /**
   * The trust set (TrustSetWire); absent from brokers before 0.5. `ssh.hostKey`
   * and `ssh.hostCertificateAuthority` stay the ones an agent from before 0.5
   * must pin: the broker's presented host key until a host-key rotation is
   * committed.
   */
  trust?: TrustSetWire;
}

export type EnrollResponse = CertificateGrantWire;

export interface RenewRequest {
  deviceId: string;
  /** Unix seconds when the device signed the request. */
  timestamp: number;
  /** 16-64 characters of base64url, fresh for every request. */
  nonce: string;
  /** Key rotation: the device's new Ed25519 public key line. */
  newPublicKey?: string;
  /** SSHSIG (armored) over renewMessage() by the device's enrolled key, namespace RENEW_NAMESPACE. */
  signature: string;
  /** With newPublicKey: SSHSIG over the same message by the new key. */
  newKeySignature?: string;
  /** AGENT_CAPABILITIES values (not covered by the signature); absent from agents before 0.5. */
  capabilities?: string[];
}

export type RenewResponse = CertificateGrantWire;

/** GET /v1/ca: the broker's public keys, its TLS pin and its SSH endpoint. */
export interface CaResponse {
  userCertificateAuthority: string;
  hostCertificateAuthority: string;
  hostKey: string;
  /** "sha256//BASE64" of the API's TLS key; null when the broker serves plain HTTP. */
  apiPin: string | null;
  /** Every SSH endpoint, the first being `ssh`'s (see CertificateGrantWire.sshEndpoints). */
  sshEndpoints?: SshAddressWire[];
  ssh: SshEndpointWire;
  /** The trust set devices are given now (TrustSetWire); absent from brokers before 0.5. */
  trust?: TrustSetWire;
}

/**
 * GET /healthz, always 200 while the broker serves. `degraded`: it serves,
 * but something needs an operator; `problems` says what
 * (`KRL_WRITE_FAILING`: the KRL file cannot be written; revocations still
 * hold in memory and the write is retried; `SSHD_PORT_MISMATCH`: OpenSSH
 * mode, sshd does not listen on the port devices are told, see
 * docs/operations.md; `SSHD_RELOAD_NEEDED` / `SSHD_RELOAD_FAILED`: OpenSSH
 * mode, sshd does not serve the presented host key yet; `API_TLS_CERT_EXPIRING`:
 * an operator's TLS certificate ends within 30 days).
 */
export interface HealthResponse {
  status: 'ok' | 'degraded';
  problems?: string[];
}

export const RENEW_NAMESPACE = 'certunnel-renew';

/**
 * The exact bytes a renewal signature covers. Line-oriented text so that a
 * device with only a POSIX shell, ssh-keygen and curl can build it with printf.
 */
export function renewMessage(req: Pick<RenewRequest, 'deviceId' | 'timestamp' | 'nonce' | 'newPublicKey'>): string {
  return [
    'certunnel-renew-v1',
    `device ${req.deviceId}`,
    `timestamp ${req.timestamp}`,
    `nonce ${req.nonce}`,
    `new-key ${req.newPublicKey ?? '-'}`,
    '',
  ].join('\n');
}

/** The TLS server name suffix that asks the broker for one of its API identities by pin (pinServerName). */
export const PIN_SERVER_NAME_SUFFIX = '.pin.certunnel.invalid';

/**
 * The TLS server name (SNI) that asks the broker for the API identity whose
 * key has PIN ("sha256//BASE64"): the first 32 hex digits of the SPKI's
 * SHA-256, then PIN_SERVER_NAME_SUFFIX. During an api-tls rotation the
 * broker serves the current identity by default and the next (or, for the
 * renewal grace period after a commit, the retired one) by this name
 * (docs/rotation.md), so an agent that holds only one pin still finds its
 * key. `.invalid` never resolves (RFC 2606): the name is only ever sent as
 * SNI. Returns null for a malformed pin.
 */
export function pinServerName(pin: string): string | null {
  const m = /^sha256\/\/([A-Za-z0-9+/]{43}=)$/.exec(pin);
  if (!m) return null;
  const bytes = atob(m[1]!);
  let hex = '';
  for (let i = 0; i < 16; i++) hex += bytes.charCodeAt(i).toString(16).padStart(2, '0');
  return `${hex}${PIN_SERVER_NAME_SUFFIX}`;
}
