/**
 * Prometheus metrics. One registry per broker (tests run several brokers in
 * one process). Gauges that describe stored state are read from the store at
 * scrape time rather than kept by hand.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { NodeStatus } from '../../api/index.js';
import type { BrokerConfig } from '../core/config.js';
import { activeSince } from '../core/rotation.js';
import { TRUST_ROOTS } from '../core/trust-roots.js';
import { nodeStatus } from '../core/node-status.js';
import type { Store } from '../store/types.js';

export interface GatewayStatsSource {
  stats(): {
    tunnelsConnected: number;
    authFailures: Record<string, number>;
    forwardsRefused: Record<string, number>;
    bytesIn: number;
    bytesOut: number;
  };
}

/** The revocation list's KRL health (broker/compose/revocation-list.ts). */
export interface KrlHealthSource {
  health(): { written: boolean; writeFailures: number };
}

/** The presence writer's queue (broker/core/presence-writer.ts). */
export interface PresenceWriteStatsSource {
  stats(): { pending: number; retried: number; dropped: number };
}

export class BrokerMetrics {
  readonly registry = new Registry();
  readonly enrollments = new Counter({ name: 'certunnel_enrollments_total', help: 'Enrollment attempts by outcome (ok or error code)', labelNames: ['outcome'], registers: [this.registry] });
  readonly renewals = new Counter({ name: 'certunnel_renewals_total', help: 'Renewal attempts by outcome (ok or error code)', labelNames: ['outcome'], registers: [this.registry] });
  readonly revocations = new Counter({ name: 'certunnel_revocations_total', help: 'Devices revoked', registers: [this.registry] });
  readonly httpDuration = new Histogram({
    name: 'certunnel_http_request_duration_seconds', help: 'HTTP API request duration', labelNames: ['route', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [this.registry],
  });
  readonly proxyRequests = new Counter({
    name: 'certunnel_proxy_requests_total', help: 'Requests on device hostnames by outcome: relayed, upgraded (WebSocket), or the refusal code',
    labelNames: ['outcome'], registers: [this.registry],
  });
  readonly proxyUpstreamSeconds = new Histogram({
    name: 'certunnel_proxy_upstream_response_seconds', help: "Time from relaying a request to the device's response head (through the tunnel)",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5], registers: [this.registry],
  });
  readonly proxyLogins = new Counter({ name: 'certunnel_proxy_logins_total', help: 'Browser logins on device hostnames by outcome (ok or error code)', labelNames: ['outcome'], registers: [this.registry] });
  readonly proxyWebsockets = new Gauge({ name: 'certunnel_proxy_websockets', help: 'WebSocket (upgraded) connections relayed now', registers: [this.registry] });
  private gateway: GatewayStatsSource | undefined;
  private krl: KrlHealthSource | undefined;
  private presenceWrites: PresenceWriteStatsSource | undefined;

  constructor(store: Store, config: BrokerConfig, clock: () => Date) {
    new Gauge({
      name: 'certunnel_devices', help: 'Devices by status', labelNames: ['status'], registers: [this.registry],
      async collect() {
        const counts = await store.countDevicesByStatus();
        this.set({ status: 'active' }, counts.active);
        this.set({ status: 'revoked' }, counts.revoked);
        this.set({ status: 'online' }, counts.online);
      },
    });
    new Gauge({
      name: 'certunnel_tokens_outstanding', help: 'Enrollment tokens that are unused, unrevoked and unexpired', registers: [this.registry],
      async collect() {
        this.set(await store.countActiveTokens(clock()));
      },
    });
    new Gauge({
      name: 'certunnel_port_blocks', help: 'Port blocks of the pool by state', labelNames: ['state'], registers: [this.registry],
      async collect() {
        const usage = await store.portPoolUsage(config.ports, clock());
        for (const state of ['total', 'allocated', 'quarantined', 'free'] as const) this.set({ state }, usage[state]);
      },
    });
    new Gauge({
      name: 'certunnel_cluster_nodes', help: 'Broker nodes sharing the store, by status (up, down, stopped), as this node sees them', labelNames: ['status'], registers: [this.registry],
      async collect() {
        const now = clock();
        const counts: Record<NodeStatus, number> = { up: 0, down: 0, stopped: 0 };
        for (const node of await store.listNodes()) counts[nodeStatus(node, now, config.cluster.downAfterSeconds)]++;
        for (const [status, n] of Object.entries(counts)) this.set({ status }, n);
      },
    });
    new Gauge({
      name: 'certunnel_rotation_phase', help: 'The trust root rotation under way: 1 for its root and phase, 0 for every other (docs/rotation.md)', labelNames: ['root', 'phase'], registers: [this.registry],
      async collect() {
        const active = await store.activeRotation();
        for (const root of TRUST_ROOTS) for (const phase of ['prepare', 'learn'] as const) this.set({ root, phase }, active?.root === root && active.phase === phase ? 1 : 0);
      },
    });
    new Gauge({
      name: 'certunnel_rotation_devices', help: 'Active devices that have learned the next trust of the rotation under way, and those lagging (0 and 0 without one)', labelNames: ['state'], registers: [this.registry],
      async collect() {
        const active = await store.activeRotation();
        const counts = active
          ? await store.rotationDeviceCounts({ rotationId: active.id, signedBy: active.root === 'user-ca' ? active.nextFingerprint : null, activeSince: activeSince({ config, clock }), limit: 0 })
          : { active: 0, learned: 0 };
        this.set({ state: 'learned' }, counts.learned);
        this.set({ state: 'lagging' }, counts.active - counts.learned);
      },
    });
    const krlHealth = (): ReturnType<KrlHealthSource['health']> | undefined => this.krl?.health();
    new Gauge({
      name: 'certunnel_krl_stale', help: 'Whether the KRL file on disk lags the store because writes fail (1) or not (0)', registers: [this.registry],
      collect() {
        this.set(krlHealth()?.written === false ? 1 : 0);
      },
    });
    new Gauge({
      name: 'certunnel_krl_write_failures', help: 'Failed KRL writes (since start)', registers: [this.registry],
      collect() {
        this.set(krlHealth()?.writeFailures ?? 0);
      },
    });
    new Gauge({
      name: 'certunnel_audit_events', help: 'Rows in the audit trail (refusals and failures are pruned after audit.failureRetentionDays)', registers: [this.registry],
      async collect() {
        this.set(await store.countAudit());
      },
    });
    const presenceStats = (): ReturnType<PresenceWriteStatsSource['stats']> | undefined => this.presenceWrites?.stats();
    new Gauge({
      name: 'certunnel_presence_writes_pending', help: 'Devices whose latest presence update has not reached the store yet (queued, in flight, or waiting for a retry)', registers: [this.registry],
      collect() {
        this.set(presenceStats()?.pending ?? 0);
      },
    });
    new Gauge({
      name: 'certunnel_presence_write_retries', help: 'Presence writes retried after the store was busy or unavailable (since start)', registers: [this.registry],
      collect() {
        this.set(presenceStats()?.retried ?? 0);
      },
    });
    new Gauge({
      name: 'certunnel_presence_writes_dropped', help: 'Presence updates given up: a permanent store error, or not written by shutdown (since start)', registers: [this.registry],
      collect() {
        this.set(presenceStats()?.dropped ?? 0);
      },
    });
    const gatewayStats = (): ReturnType<GatewayStatsSource['stats']> | undefined => this.gateway?.stats();
    new Gauge({
      name: 'certunnel_tunnels_connected', help: 'Device tunnels connected to the embedded gateway', registers: [this.registry],
      collect() {
        this.set(gatewayStats()?.tunnelsConnected ?? 0);
      },
    });
    new Gauge({
      name: 'certunnel_ssh_auth_failures', help: 'SSH authentication failures by reason (since start)', labelNames: ['reason'], registers: [this.registry],
      collect() {
        for (const [reason, n] of Object.entries(gatewayStats()?.authFailures ?? {})) this.set({ reason }, n);
      },
    });
    new Gauge({
      name: 'certunnel_ssh_forwards_refused', help: 'Forward requests refused by reason (since start)', labelNames: ['reason'], registers: [this.registry],
      collect() {
        for (const [reason, n] of Object.entries(gatewayStats()?.forwardsRefused ?? {})) this.set({ reason }, n);
      },
    });
    new Gauge({
      name: 'certunnel_tunnel_bytes', help: 'Bytes relayed through tunnels (since start)', labelNames: ['direction'], registers: [this.registry],
      collect() {
        const s = gatewayStats();
        this.set({ direction: 'in' }, s?.bytesIn ?? 0);
        this.set({ direction: 'out' }, s?.bytesOut ?? 0);
      },
    });
  }

  /** The KRL gauges: alert on certunnel_krl_stale 1 (the file sshd and GET /v1/krl readers see lags the store). */
  attachRevocations(source: KrlHealthSource): void {
    this.krl = source;
  }

  attachGateway(source: GatewayStatsSource): void {
    this.gateway = source;
  }

  /** How long the API's TLS certificate has left (api-tls-renewal.ts): alert well before 0. Not on plain HTTP. */
  attachApiTls(source: { expirySeconds(): number | null }): void {
    new Gauge({
      name: 'certunnel_api_tls_cert_expiry_seconds', help: 'Seconds until the API TLS certificate served by default expires (negative: expired)', registers: [this.registry],
      collect() {
        const seconds = source.expirySeconds();
        if (seconds !== null) this.set(seconds);
      },
    });
  }

  /** The presence gauges: alert on certunnel_presence_writes_pending staying high (the store does not keep up). */
  attachPresenceWrites(source: PresenceWriteStatsSource): void {
    this.presenceWrites = source;
  }
}
