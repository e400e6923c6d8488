/**
 * The API's TLS identities, from the trust snapshot (issue #14): the
 * current one (snapshot.tls) for every connection, and by SNI
 * `<pin hex>.pin.certunnel.invalid` (api/device.ts pinServerName) any
 * identity the broker holds: a rotation's next (snapshot.otherTls), and for
 * the renewal grace period after a commit the retired one, so that an
 * agent that slept through the whole rotation, pinning only the old key,
 * can still renew and learn the new pin. A snapshot change replaces the
 * default context (server.setSecureContext) and the SNI map for new
 * handshakes; connections already open keep theirs. A restart within the
 * grace period serves the retired identities again from the copies the
 * commit kept (tls/api.key.retired-<id>, retiredTlsIdentities).
 */
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Server as HttpsServer } from 'node:https';
import { PIN_SERVER_NAME_SUFFIX, pinServerName } from '../../api/index.js';
import type { TlsIdentity, TrustRoots, TrustSnapshot } from '../core/trust-roots.js';
import type { Logger } from '../telemetry/logger.js';
import type { BrokerMetrics } from '../telemetry/metrics.js';
import type { BrokerConfig } from '../core/config.js';
import type { Store } from '../store/types.js';
import { tlsHostnames, type DataPaths } from './data-dir.js';
import { startApiTlsRenewal } from './api-tls-renewal.js';
import { servedTlsIdentity } from './tls.js';

export interface ApiTlsOptions {
  readonly trustRoots: TrustRoots;
  readonly clock: () => Date;
  readonly logger: Logger;
  /** How long a retired identity is still served by its SNI name (config.certs.renewGraceSeconds). */
  readonly retiredForMs: number;
  /** Identities retired before this start (retiredTlsIdentities), served by SNI until their time is up. */
  readonly retired?: readonly RetiredTls[];
}

/** A TLS identity an api-tls rotation retired, served by its SNI name until UNTIL (ms). */
export interface RetiredTls {
  readonly identity: TlsIdentity;
  readonly until: number;
}

/** The SNI label of PIN (pinServerName without the suffix). */
function labelOf(pin: string): string | undefined {
  return pinServerName(pin)?.slice(0, -PIN_SERVER_NAME_SUFFIX.length);
}

interface Served {
  readonly identity: TlsIdentity;
  readonly context: SecureContext;
}

export class ApiTls {
  /** By pinServerName(pin), without the suffix. */
  private byPin = new Map<string, Served>();
  private readonly retired = new Map<string, { served: Served; until: number }>();
  /** Certificates renewed for a key (api-tls-renewal.ts), by pin: served instead of the snapshot's. */
  private readonly renewed = new Map<string, string>();
  private current: Served | null = null;
  private readonly servers = new Set<HttpsServer>();
  private readonly unsubscribe: () => void;

  constructor(private readonly o: ApiTlsOptions) {
    for (const r of o.retired ?? []) {
      const label = labelOf(r.identity.pin);
      if (label) this.retired.set(label, { served: this.serve(r.identity), until: r.until });
    }
    this.apply(o.trustRoots.current(), null);
    this.unsubscribe = o.trustRoots.onChange((next, previous) => this.apply(next, previous));
  }

  /** What the https server is created with: the default identity and the SNI lookup. */
  serverOptions(): { key: string; cert: string; SNICallback: (name: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void } {
    const current = this.current;
    if (!current) throw new Error('the trust snapshot has no TLS identity (plain HTTP)');
    return { key: current.identity.key, cert: this.certOf(current.identity), SNICallback: (name, cb) => cb(null, this.contextFor(name)) };
  }

  /** SERVER's default context follows the snapshot from now on. */
  attach(server: HttpsServer): void {
    this.servers.add(server);
  }

  /** The identity served by default (its certificate possibly renewed), null on plain HTTP. */
  served(): TlsIdentity | null {
    const current = this.current;
    return current ? { ...current.identity, cert: this.certOf(current.identity) } : null;
  }

  /** A new certificate for the key of PIN (the same key: the pin stays); served from the next handshake on. */
  renewedCertificate(pin: string, cert: string): void {
    this.renewed.set(pin, cert);
    this.apply(this.o.trustRoots.current(), null);
  }

  close(): void {
    this.unsubscribe();
    this.servers.clear();
  }

  private certOf(identity: TlsIdentity): string {
    return this.renewed.get(identity.pin) ?? identity.cert;
  }

  private contextFor(servername: string): SecureContext | undefined {
    const name = servername.toLowerCase();
    if (!name.endsWith(PIN_SERVER_NAME_SUFFIX)) return undefined; // the default context
    const key = name.slice(0, -PIN_SERVER_NAME_SUFFIX.length);
    const found = this.byPin.get(key);
    if (found) return found.context;
    const retired = this.retired.get(key);
    if (retired && retired.until > this.o.clock().getTime()) return retired.served.context;
    return undefined;
  }

  private serve(identity: TlsIdentity): Served {
    return { identity, context: createSecureContext({ key: identity.key, cert: this.certOf(identity) }) };
  }

  private apply(next: TrustSnapshot, previous: TrustSnapshot | null): void {
    const identities = [...(next.tls ? [next.tls] : []), ...next.otherTls];
    const byPin = new Map<string, Served>();
    for (const identity of identities) {
      const label = labelOf(identity.pin);
      if (label) byPin.set(label, this.serve(identity));
    }
    const now = this.o.clock().getTime();
    for (const [key, old] of this.byPin) {
      if (!byPin.has(key)) this.retired.set(key, { served: old, until: now + this.o.retiredForMs });
    }
    for (const [key, entry] of this.retired) if (byPin.has(key) || entry.until <= now) this.retired.delete(key);
    this.byPin = byPin;
    const current = next.tls ? (byPin.get(labelOf(next.tls.pin) ?? '') ?? this.serve(next.tls)) : null;
    this.current = current;
    // New handshakes only: open connections keep the context they were made with.
    if (current) for (const server of this.servers) server.setSecureContext({ key: current.identity.key, cert: this.certOf(current.identity) });
    if (previous) this.o.logger.info({ pin: current?.identity.pin ?? null, alsoServed: [...byPin.values()].map((s) => s.identity.pin), retired: this.retired.size }, 'API TLS: the identities served changed');
  }
}

export interface RunningApiTls {
  readonly tls: ApiTls;
  /** /healthz: API_TLS_CERT_EXPIRING while an operator's certificate nears its end. */
  problem(): string | null;
  close(): void;
}

/**
 * The identities committed api-tls rotations retired less than GRACEMS ago, from the copies the commit kept
 * beside tls/api.key (rotation-follower.ts); a copy that is gone or unreadable is left out (logged).
 */
export async function retiredTlsIdentities(o: {
  store: Pick<Store, 'listRotations'>; paths: Pick<DataPaths, 'tlsKey' | 'tlsCert'>; graceMs: number; now: number; logger: Logger;
}): Promise<RetiredTls[]> {
  const out: RetiredTls[] = [];
  for (const r of await o.store.listRotations(50)) {
    if (r.root !== 'api-tls' || r.finishedAt === null || (r.outcome !== 'committed' && r.outcome !== 'forced')) continue;
    const until = r.finishedAt.getTime() + o.graceMs;
    if (until <= o.now) continue;
    try {
      const [key, cert] = await Promise.all([readFile(`${o.paths.tlsKey}.retired-${r.id}`, 'utf8'), readFile(`${o.paths.tlsCert}.retired-${r.id}`, 'utf8')]);
      out.push({ identity: servedTlsIdentity(key, cert), until });
    } catch (err) {
      o.logger.warn({ rotation: r.id, code: (err as { code?: unknown }).code }, 'API TLS: the identity rotation retired is not on disk; agents that slept through it need the new pin');
    }
  }
  return out;
}

/** The API's TLS identities and the renewal of the broker's own certificate; null on plain HTTP (api.insecureHttp). */
export function startApiTls(o: {
  config: BrokerConfig; paths: Pick<DataPaths, 'tlsCert'>; trustRoots: TrustRoots; clock: () => Date; logger: Logger; metrics: Pick<BrokerMetrics, 'attachApiTls'>;
  retired?: readonly RetiredTls[];
}): RunningApiTls | null {
  if (o.config.api.insecureHttp) return null;
  const tls = new ApiTls({
    trustRoots: o.trustRoots, clock: o.clock, logger: o.logger, retiredForMs: o.config.certs.renewGraceSeconds * 1000, ...(o.retired ? { retired: o.retired } : {}),
  });
  const renewal = startApiTlsRenewal({
    served: () => tls.served(), renewed: (pin, cert) => tls.renewedCertificate(pin, cert), certPath: o.paths.tlsCert, hostnames: tlsHostnames(o.config), clock: o.clock, logger: o.logger,
  });
  o.metrics.attachApiTls(renewal);
  return {
    tls,
    problem: () => renewal.problem(),
    close: () => {
      renewal.stop();
      tls.close();
    },
  };
}
