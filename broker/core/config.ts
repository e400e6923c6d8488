/**
 * Broker configuration: the schema, its defaults and the environment
 * overrides, validated and frozen (Teleport's checkAndSetDefaults). The
 * entry point reads it once (broker/compose/load-config.ts) and passes the
 * frozen result down; nothing below reads process.env. Secrets (the CA
 * passphrase) never live here.
 */
import { z } from 'zod';
import { BrokerError } from './errors.js';
import { oidcConfigSchema } from './oidc-config.js';
import { parseMaxStartups } from './rate-limit.js';

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;
const hostPort = z.string().regex(HOST_PORT, 'must be HOST:PORT');

/** An address devices dial: HOST:PORT (IPv6 in brackets), a port 1-65535. */
const sshEndpoint = z.string().refine((v) => {
  if (!HOST_PORT.test(v)) return false;
  const port = Number(v.slice(v.lastIndexOf(':') + 1));
  return port >= 1 && port <= 65535;
}, 'must be HOST:PORT with a port from 1 to 65535');

const configSchema = z
  .object({
    /** Hostname suffix for device HTTP proxying (<device>.<domain>) and the host certificate's names. */
    domain: z.string().regex(/^[a-z0-9.-]+$/i).default('certunnel.local'),
    api: z
      .object({
        listen: hostPort.default('0.0.0.0:8443'),
        /** Plain HTTP, only behind a TLS-terminating proxy. */
        insecureHttp: z.boolean().default(false),
        /**
         * Believe the last X-Forwarded-For entry as the client address (audit, rate limits) and extend the
         * proxy's X-Forwarded-* for devices: set it when every connection comes through a proxy that adds them.
         * Optional only because data directories from before it existed lack it: see trustsProxy.
         */
        trustProxy: z.boolean().optional(),
        /**
         * Pins ("sha256//BASE64" of a SubjectPublicKeyInfo) of TLS keys kept in reserve, told to devices in every
         * grant's trust set beside the served key's: a certificate for one of them (e.g. from a public CA) can be
         * put in place later, or in an emergency, and devices accept it (docs/rotation.md, "Backup pins").
         */
        backupPins: z.array(z.string().regex(/^sha256\/\/[A-Za-z0-9+/]{43}=$/, 'must be sha256// and the base64 of 32 bytes')).max(2).default([]),
        /** URL devices and operators use; defaults from listen. */
        publicUrl: z.string().url().optional(),
        bodyLimitBytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(64 * 1024),
        /**
         * Sockets open at once on the API port from one IPv4 address or IPv6 /64; beyond it a new one is closed at
         * once. Not applied with trustProxy (every peer is then the proxy, which must limit its clients itself).
         */
        maxConnectionsPerSource: z.number().int().min(1).max(100_000).default(100),
        /** Sockets open at once on the API port, all sources together. */
        maxConnections: z.number().int().min(1).max(1_000_000).default(10_000),
        /** A TLS handshake not finished in this long is abandoned (node's default is 120 s). */
        handshakeTimeoutSeconds: z.number().int().min(1).max(120).default(10),
        /** A request's headers must arrive within this long. */
        headersTimeoutSeconds: z.number().int().min(1).max(60).default(10),
        /** An idle keep-alive connection is closed after this long. */
        keepAliveTimeoutSeconds: z.number().int().min(1).max(300).default(10),
        /**
         * Failed enrollments and renewals and unknown API keys per client address (IPv6: per /64): this many at once,
         * then failuresPerMinute; beyond that RATE_LIMITED (429) until the bucket refills. Successes never spend it.
         */
        failureBurst: z.number().int().min(1).max(100_000).default(50),
        failuresPerMinute: z.number().min(0.1).max(100_000).default(30),
      })
      .strict()
      .prefault({}),
    ssh: z
      .object({
        mode: z.enum(['embedded', 'openssh']).default('embedded'),
        listen: hostPort.default('0.0.0.0:2222'),
        /** Host and port devices dial; defaults from listen. */
        publicHost: z.string().optional(),
        publicPort: z.number().int().min(1).max(65535).optional(),
        /**
         * Every SSH endpoint devices are told, as HOST:PORT, the first also being the grant's `ssh` endpoint (several
         * broker nodes sharing one host key and host CA): devices pick one at random and fail over to the others.
         * Absent: the one endpoint from publicHost/publicPort (or listen).
         */
        endpoints: z
          .array(sshEndpoint)
          .min(1, 'must list at least one HOST:PORT')
          .max(64, 'at most 64 endpoints')
          .refine((list) => new Set(list.map((e) => e.toLowerCase())).size === list.length, 'lists an endpoint twice')
          .optional(),
        keepaliveIntervalSeconds: z.number().int().min(1).max(3600).default(15),
        keepaliveCountMax: z.number().int().min(1).max(100).default(3),
        /** Where OpenSSH mode writes sshd's files; relative to the data dir. */
        opensshDir: z.string().default('openssh'),
        /** OpenSSH mode: the sshd binary (absolute path) and the sshd_config it runs with, for `sshd -T` at start (which port it listens on). */
        sshdPath: z.string().startsWith('/', 'must be an absolute path').default('/usr/sbin/sshd'),
        sshdConfig: z.string().default('/etc/ssh/sshd_config'),
        /**
         * OpenSSH mode: how the broker reloads sshd after the host key or host certificate changed (a rotation): a
         * command (e.g. `systemctl reload ssh`), or SIGHUP to the pid in sshdPidFile once `sshd -t -f sshdConfig`
         * passes. Neither: /healthz says SSHD_RELOAD_NEEDED until sshd serves the presented key (docs/operations.md).
         */
        sshdReloadCommand: z.string().min(1).max(1000).refine((v) => !v.includes('\n'), 'must be one line').optional(),
        sshdPidFile: z.string().startsWith('/', 'must be an absolute path').optional(),
        /** OpenSSH mode: how often the broker looks for the devices' listening tunnel ports (presence). */
        presencePollSeconds: z.number().int().min(1).max(300).default(5),
        /**
         * How often live sessions are checked against the store's revocations
         * (and the KRL rebuilt): anything a lost hook or a stale KRL let in ends then.
         */
        reconcileSeconds: z.number().int().min(1).max(3600).default(10),
        /**
         * Connections not yet authenticated, both modes (sshd MaxStartups start:rate:full): from start on, new ones are
         * refused at random, rate% at start rising to 100% at full.
         */
        maxStartups: z.string().refine((v) => parseMaxStartups(v) !== undefined, 'must be start:rate:full, 1 <= start <= full, rate 1-100').default('128:30:512'),
        /** …of which one IPv4 address or IPv6 /64 may hold this many (sshd PerSourceMaxStartups). */
        perSourceMaxStartups: z.number().int().min(1).max(100_000).default(32),
        /** From TCP connect to authentication (sshd LoginGraceTime). */
        loginGraceSeconds: z.number().int().min(1).max(600).default(15),
        /** Embedded gateway: concurrent sessions of one device (or one operator certificate). */
        maxSessionsPerDevice: z.number().int().min(1).max(1000).default(4),
      })
      .strict()
      .prefault({}),
    ports: z
      .object({
        first: z.number().int().min(1024).max(65535).default(20000),
        last: z.number().int().min(1024).max(65535).default(29999),
        perDevice: z.number().int().min(1).max(64).default(2),
      })
      .strict()
      .prefault({})
      .refine((p) => p.last - p.first + 1 >= p.perDevice, { message: 'port range is smaller than one block' }),
    certs: z
      .object({
        deviceValiditySeconds: z.number().int().min(60).max(7 * 86400).default(3600),
        operatorValidityMinutes: z.number().int().min(1).max(60).default(10),
        /** An expired device certificate may still be renewed for this long. */
        renewGraceSeconds: z.number().int().min(0).max(365 * 86400).default(30 * 86400),
        /** Devices are told to renew at this fraction of the validity. */
        renewAtFraction: z.number().min(0.1).max(0.95).default(2 / 3),
      })
      .strict()
      .prefault({}),
    tokens: z
      .object({
        defaultTtlSeconds: z.number().int().min(60).max(366 * 86400).default(30 * 86400),
        maxBatch: z.number().int().min(1).max(100000).default(10000),
        /**
         * A used token presented again with the same device key within this long (the broker's answer was lost,
         * the device lost power before saving it) gets that device's grant again, with a fresh certificate.
         */
        enrollRetrySeconds: z.number().int().min(0).max(7 * 86400).default(3600),
      })
      .strict()
      .prefault({}),
    renew: z
      .object({
        /** Renewal requests whose timestamp is further than this from the broker's clock are stale. */
        maxSkewSeconds: z.number().int().min(5).max(3600).default(300),
      })
      .strict()
      .prefault({}),
    /** Single sign-on to the console (broker/core/oidc-config.ts); absent: API-key sign-in only. */
    oidc: oidcConfigSchema.optional(),
    proxy: z
      .object({
        /** Serve https://<device-name>.<domain>/ by relaying to the device's http slot (operators only). */
        enabled: z.boolean().default(true),
        /** How long a browser login (the session cookie) lasts. */
        sessionMinutes: z.number().int().min(5).max(7 * 24 * 60).default(8 * 60),
        /**
         * The longest a whole request may take to arrive (node's requestTimeout, for the API too):
         * uploads through the proxy (firmware images) need more than an API call.
         */
        requestTimeoutSeconds: z.number().int().min(10).max(3600).default(300),
        /**
         * Failed logins and unknown bearer keys on device hostnames, per client address (IPv6: per /64):
         * this many at once, then authFailuresPerMinute; beyond that RATE_LIMITED (429) until the bucket refills.
         */
        authFailureBurst: z.number().int().min(1).max(10_000).default(10),
        authFailuresPerMinute: z.number().min(0.1).max(10_000).default(6),
      })
      .strict()
      .prefault({}),
    audit: z
      .object({
        /** Refusal and failure rows older than this are deleted (state changes are kept). */
        failureRetentionDays: z.number().int().min(1).max(36_500).default(90),
        /** Repeats of one failure (action, outcome, client address) within this window make one row with a count. */
        aggregateSeconds: z.number().int().min(1).max(3600).default(60),
      })
      .strict()
      .prefault({}),
    /** Several broker nodes on one PostgreSQL database (docs/cluster.md). A single broker needs none of it. */
    cluster: z
      .object({
        /** How often this node writes its heartbeat into the store. */
        heartbeatSeconds: z.number().int().min(1).max(60).default(5),
        /** A node whose heartbeat is older than this is down: its presence is cleared, and its devices reconnect elsewhere. */
        downAfterSeconds: z.number().int().min(3).max(600).default(20),
        /** host:port of this node's end of the node-to-node link (operators reaching a device held by another node); absent: no link. */
        internalListen: hostPort.optional(),
        /** host:port other nodes dial for internalListen, when it is a wildcard or behind NAT. */
        internalAddress: hostPort.optional(),
      })
      .strict()
      .prefault({}),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
      .strict()
      .prefault({}),
  })
  .strict();

export type BrokerConfig = Readonly<z.infer<typeof configSchema>> & { readonly dataDir: string };

export type PlainObject = Record<string, unknown>;

export function isPlainObject(value: unknown): value is PlainObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function merge(base: PlainObject, over: PlainObject): PlainObject {
  const out: PlainObject = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    out[key] = isPlainObject(value) && isPlainObject(out[key]) ? merge(out[key] as PlainObject, value) : value;
  }
  return out;
}

/** Environment variables that override config fields (documented in docs/operations.md, "Configuration"). */
const ENV_FIELDS: ReadonlyArray<[string, string[], 'string' | 'number' | 'boolean' | 'list']> = [
  ['CERTUNNEL_DOMAIN', ['domain'], 'string'],
  ['CERTUNNEL_API_LISTEN', ['api', 'listen'], 'string'],
  ['CERTUNNEL_API_PUBLIC_URL', ['api', 'publicUrl'], 'string'],
  ['CERTUNNEL_INSECURE_HTTP', ['api', 'insecureHttp'], 'boolean'],
  ['CERTUNNEL_TRUST_PROXY', ['api', 'trustProxy'], 'boolean'],
  ['CERTUNNEL_SSH_MODE', ['ssh', 'mode'], 'string'],
  ['CERTUNNEL_SSH_LISTEN', ['ssh', 'listen'], 'string'],
  ['CERTUNNEL_SSH_PUBLIC_HOST', ['ssh', 'publicHost'], 'string'],
  ['CERTUNNEL_SSH_PUBLIC_PORT', ['ssh', 'publicPort'], 'number'],
  ['CERTUNNEL_CLUSTER_INTERNAL_LISTEN', ['cluster', 'internalListen'], 'string'],
  ['CERTUNNEL_CLUSTER_INTERNAL_ADDRESS', ['cluster', 'internalAddress'], 'string'],
  ['CERTUNNEL_CLUSTER_HEARTBEAT_SECONDS', ['cluster', 'heartbeatSeconds'], 'number'],
  ['CERTUNNEL_CLUSTER_DOWN_AFTER_SECONDS', ['cluster', 'downAfterSeconds'], 'number'],
  // Comma-separated HOST:PORT list.
  ['CERTUNNEL_SSH_ENDPOINTS', ['ssh', 'endpoints'], 'list'],
  ['CERTUNNEL_LOG_LEVEL', ['log', 'level'], 'string'],
];

export function fromEnv(env: NodeJS.ProcessEnv): PlainObject {
  let out: PlainObject = {};
  for (const [name, path, type] of ENV_FIELDS) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const value = type === 'number' ? Number(raw)
      : type === 'boolean' ? /^(1|true|yes)$/i.test(raw)
        : type === 'list' ? raw.split(',').map((item) => item.trim()).filter((item) => item !== '')
          : raw;
    out = merge(out, path.reduceRight<unknown>((acc, key) => ({ [key]: acc }), value) as PlainObject);
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (isPlainObject(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/** Validates a config object (file contents merged with overrides). Throws CONFIG_INVALID naming the field. */
export function parseConfig(input: unknown, dataDir: string): BrokerConfig {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.path.join('.') || '(top level)';
    throw new BrokerError('CONFIG_INVALID', `config field ${field}: ${issue.message}`);
  }
  return deepFreeze({ ...result.data, dataDir });
}

/**
 * Whether the API and the HTTP proxy believe X-Forwarded-* from their peer:
 * api.trustProxy when set. Unset, as in data directories made before the
 * setting existed (which run behind a TLS proxy with api.insecureHttp), it
 * follows api.insecureHttp, which used to mean both.
 */
export function trustsProxy(api: BrokerConfig['api']): boolean {
  return api.trustProxy ?? api.insecureHttp;
}

/** The start-up warning while trustsProxy believes X-Forwarded-For only because api.insecureHttp is set; undefined otherwise. */
export function implicitTrustProxyWarning(api: BrokerConfig['api']): string | undefined {
  if (api.trustProxy !== undefined || !api.insecureHttp) return undefined;
  return 'api.trustProxy is not set: X-Forwarded-For names the client because api.insecureHttp is true (the behaviour before api.trustProxy existed); '
    + 'set api.trustProxy explicitly (config.json or CERTUNNEL_TRUST_PROXY): true when every connection comes through the TLS proxy, false otherwise';
}

export function splitHostPort(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(listen.slice(i + 1)) };
}
