/**
 * The broker's trust set as the agent holds it (issue #14): the SSH host
 * keys, host CAs and API TLS pins a grant's `trust` names, the one in use
 * first. The agent stores the set it was last given (state.json `trust`,
 * known_hosts) and accepts ANY member, so that the broker can rotate its
 * host key, host CA or TLS key with devices that learned the next one
 * during the overlap. The set is learned only from grants, which come over
 * the pinned API channel.
 *
 * A grant without `trust` (a broker before 0.5) leaves the agent exactly
 * as before: `ssh.hostKey`, `ssh.hostCertificateAuthority` and the
 * configured pin are the whole trust. A malformed set is refused
 * (TRUST_INVALID) and the previous one kept: a confused broker must not
 * empty or poison what a device trusts.
 */
import { formatPublicKey, isTlsPin, parsePublicKey, type PublicKey } from '../ca/index.js';
import type { CertificateGrantWire, SshEndpointWire, TrustSetWire } from '../api/index.js';
import { AgentError } from './errors.js';

/** At most this many entries per list (current and next, and room for a rollback). */
export const MAX_TRUSTED_KEYS = 4;
export const MAX_TRUSTED_PINS = 4;

function keyLines(value: unknown, field: string): string[] {
  if (!Array.isArray(value) || value.length < 1 || value.length > MAX_TRUSTED_KEYS) {
    throw new AgentError('TRUST_INVALID', `trust.${field}: 1 to ${MAX_TRUSTED_KEYS} OpenSSH public key lines expected`);
  }
  const lines = value.map((line: unknown, i) => {
    // One printable line: a newline would smuggle a second known_hosts line past the parser.
    if (typeof line !== 'string' || line.length > 8192 || !/^[\x20-\x7e]+$/.test(line)) {
      throw new AgentError('TRUST_INVALID', `trust.${field}[${i}]: not a key line`);
    }
    try {
      // Comments dropped: a key line goes into known_hosts, and a comment is the broker's free text.
      return formatPublicKey(parsePublicKey(line));
    } catch (err) {
      throw new AgentError('TRUST_INVALID', `trust.${field}[${i}]: ${(err as { code?: string }).code ?? 'unreadable key'}`);
    }
  });
  return [...new Set(lines)];
}

/**
 * Checks a trust set from the network and returns it normalized (key lines
 * without comments, duplicates dropped, order kept); throws AgentError
 * TRUST_INVALID naming the field, never the value. Unknown fields are
 * ignored (a later broker may say more).
 */
export function parseTrustSet(value: unknown): TrustSetWire {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AgentError('TRUST_INVALID', 'trust: an object expected');
  const v = value as Partial<Record<keyof TrustSetWire, unknown>>;
  const hostKeys = keyLines(v.hostKeys, 'hostKeys');
  const hostCertificateAuthorities = keyLines(v.hostCertificateAuthorities, 'hostCertificateAuthorities');
  if (!Array.isArray(v.apiPins) || v.apiPins.length > MAX_TRUSTED_PINS) {
    throw new AgentError('TRUST_INVALID', `trust.apiPins: 0 to ${MAX_TRUSTED_PINS} pins expected`);
  }
  const apiPins = v.apiPins.map((pin: unknown, i) => {
    if (typeof pin !== 'string' || !isTlsPin(pin)) throw new AgentError('TRUST_INVALID', `trust.apiPins[${i}]: sha256//BASE64 of 32 bytes expected`);
    return pin;
  });
  return { hostKeys, hostCertificateAuthorities, apiPins: [...new Set(apiPins)] };
}

/** What to store from GRANT: its valid trust set, or PREVIOUS (and why) when it sent a malformed one. */
export interface TrustOutcome {
  /** undefined: the grant has none (an older broker), and neither is anything kept. */
  readonly trust: TrustSetWire | undefined;
  /** Set when the grant's set was refused and PREVIOUS kept. */
  readonly refused?: AgentError;
}

export function trustOfGrant(grant: Pick<CertificateGrantWire, 'trust'>, previous: TrustSetWire | undefined): TrustOutcome {
  if (grant.trust === undefined) return { trust: undefined };
  try {
    return { trust: parseTrustSet(grant.trust) };
  } catch (err) {
    if (err instanceof AgentError) return { trust: previous, refused: err };
    throw err;
  }
}

/**
 * The host keys and host CAs the agent accepts for SSH: the stored set's
 * members plus `ssh`'s own (the same grant named both), or `ssh`'s alone
 * without a set. OpenSSH lines without comments, the one in use first.
 */
export function acceptedSshTrust(ssh: SshEndpointWire, trust: TrustSetWire | undefined): { hostKeys: string[]; hostCertificateAuthorities: string[] } {
  const own = (line: string): string => formatPublicKey(parsePublicKey(line));
  return {
    hostKeys: [...new Set([own(ssh.hostKey), ...(trust?.hostKeys ?? [])])],
    hostCertificateAuthorities: [...new Set([own(ssh.hostCertificateAuthority), ...(trust?.hostCertificateAuthorities ?? [])])],
  };
}

/** The host keys the ssh2 transport accepts, parsed. */
export function acceptedHostKeys(ssh: SshEndpointWire, trust: TrustSetWire | undefined): PublicKey[] {
  return acceptedSshTrust(ssh, trust).hostKeys.map((line) => parsePublicKey(line));
}

/**
 * The TLS pins the API client accepts: the configured one and, with it,
 * the stored set's. Without a configured pin there is no pinning to extend
 * (an https URL is checked against the system CAs, as before).
 */
export function acceptedApiPins(configured: string | undefined, trust: TrustSetWire | undefined): string[] {
  if (!configured) return [];
  return [...new Set([configured, ...(trust?.apiPins ?? [])])];
}

/** How many of each the agent trusts (logs and `agent status`: counts, never the keys). */
export interface TrustCounts {
  readonly hostKeys: number;
  readonly hostCertificateAuthorities: number;
  readonly apiPins: number;
}

export function trustCounts(ssh: SshEndpointWire, trust: TrustSetWire | undefined, configuredPin: string | undefined): TrustCounts {
  const accepted = acceptedSshTrust(ssh, trust);
  return {
    hostKeys: accepted.hostKeys.length,
    hostCertificateAuthorities: accepted.hostCertificateAuthorities.length,
    apiPins: acceptedApiPins(configuredPin, trust).length,
  };
}

/** Whether two stored sets say the same (order matters: the first is the one in use). */
export function sameTrust(a: TrustSetWire | undefined, b: TrustSetWire | undefined): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}
