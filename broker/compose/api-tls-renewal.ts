/**
 * The API's TLS certificate before it expires (issue #14). Devices pin the
 * key, not the certificate, so the broker's own self-signed certificate is
 * renewed with the SAME key within RENEW_WITHIN_MS of its end: the pin stays,
 * nothing for devices to learn. A certificate the operator put in
 * tls/api.crt (not self-signed: from a public or company CA) is never
 * replaced; its approaching end is said in the log and in /healthz
 * (API_TLS_CERT_EXPIRING), and certunnel_api_tls_cert_expiry_seconds shows
 * how long it has left either way. Checked at start and daily.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../../ca/index.js';
import type { TlsIdentity } from '../core/trust-roots.js';
import type { Logger } from '../telemetry/logger.js';
import { issueSelfSignedCertificate, isSelfSigned } from './tls.js';

export const RENEW_WITHIN_MS = 30 * 86400_000;
const DAY_MS = 86400_000;

export interface ApiTlsRenewalOptions {
  /** The identity served by default now (its certificate as served), null on plain HTTP. */
  served(): TlsIdentity | null;
  /** A renewed certificate for the same key: serve it (ApiTls.renewedCertificate). */
  renewed(pin: string, cert: string): void;
  /** Where the certificate lives on disk (tls/api.crt), rewritten on renewal when it holds the served one. */
  readonly certPath: string;
  /** The names a renewed certificate carries (data-dir.ts tlsHostnames). */
  readonly hostnames: readonly string[];
  readonly clock: () => Date;
  readonly logger: Logger;
  /** Default one day. */
  readonly intervalMs?: number;
}

export interface ApiTlsRenewal {
  /** API_TLS_CERT_EXPIRING while an operator's certificate is within 30 days of its end (or past it). */
  problem(): 'API_TLS_CERT_EXPIRING' | null;
  /** Seconds until the served certificate's end (negative once past); null on plain HTTP. */
  expirySeconds(): number | null;
  /** One check now (the timer's). */
  check(): Promise<void>;
  stop(): void;
}

export function startApiTlsRenewal(o: ApiTlsRenewalOptions): ApiTlsRenewal {
  let problem: 'API_TLS_CERT_EXPIRING' | null = null;
  let running: Promise<void> | undefined;
  const expiresAt = (): number | null => {
    const served = o.served();
    return served ? Date.parse(new X509Certificate(served.cert).validTo) : null;
  };
  const checkOnce = async (): Promise<void> => {
    const served = o.served();
    const end = expiresAt();
    if (!served || end === null) return;
    const now = o.clock().getTime();
    if (end - now > RENEW_WITHIN_MS) {
      problem = null;
      return;
    }
    const daysLeft = Math.floor((end - now) / DAY_MS);
    if (!isSelfSigned(served.cert)) {
      problem = 'API_TLS_CERT_EXPIRING';
      o.logger.warn({ code: 'API_TLS_CERT_EXPIRING', daysLeft, validTo: new Date(end).toISOString() },
        'API TLS: the certificate in tls/api.crt (not self-signed: not the broker\'s to renew) ends soon; replace it, keeping the key (docs/operations.md)');
      return;
    }
    const cert = issueSelfSignedCertificate(served.key, o.hostnames, o.clock());
    // The file holds the served certificate unless a rotation put another identity in front: then only memory changes.
    const onDisk = await readFile(o.certPath, 'utf8').catch(() => '');
    if (onDisk.trim() === served.cert.trim()) await writeFileAtomic(o.certPath, cert, { mode: 0o644 });
    o.renewed(served.pin, cert);
    problem = null;
    o.logger.info({ pin: served.pin, validTo: new X509Certificate(cert).validTo, daysLeftBefore: daysLeft }, 'API TLS: the self-signed certificate renewed with the same key (the pin is unchanged)');
  };
  const check = (): Promise<void> => {
    running ??= checkOnce()
      .catch((err: unknown) => o.logger.error({ err }, 'API TLS: the certificate check failed; retried at the next'))
      .finally(() => (running = undefined));
    return running;
  };
  const timer = setInterval(() => void check(), o.intervalMs ?? DAY_MS);
  timer.unref();
  void check();
  return {
    problem: () => problem,
    expirySeconds: () => {
      const end = expiresAt();
      return end === null ? null : Math.floor((end - o.clock().getTime()) / 1000);
    },
    check,
    stop: () => clearInterval(timer),
  };
}
