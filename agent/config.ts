/**
 * The agent's configuration: one JSON file (flashed at the factory, or
 * written by hand), overridden by command-line flags, validated, defaulted
 * and frozen in the CLI entry point, then passed down. Nothing in agent/
 * reads process.env; secrets read from the environment (the enrollment
 * token) arrive here as overrides from the CLI.
 *
 * Example (every field is optional: stateDir defaults to /var/lib/certunnel;
 * broker is needed to enroll and, when set, is used over the one state.json records):
 *
 *   {
 *     "broker": { "url": "https://broker.example.net:8443", "pin": "sha256//…" },
 *     "stateDir": "/var/lib/certunnel",
 *     "enroll": { "token": "cte_…", "name": "kiosk-17" },
 *     "transport": "ssh2",
 *     "services": { "ssh": "127.0.0.1:22", "http": "127.0.0.1:8080", "mqtt": { "slot": 2, "target": "127.0.0.1:1883" } },
 *     "keepalive": { "intervalSeconds": 15, "countMax": 3 },
 *     "backoff": { "baseMs": 1000, "capMs": 60000 },
 *     "log": { "level": "info" }
 *   }
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { z } from 'zod';
import { isTlsPin } from '../ca/index.js';
import { DEVICE_NAME, SLOT } from '../api/index.js';
import { AgentError, EXIT } from './errors.js';

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

const target = z.string().refine((s) => {
  const m = HOST_PORT.exec(s);
  return m !== null && Number(m[2]) >= 1 && Number(m[2]) <= 65535;
}, 'must be HOST:PORT (IPv6 in brackets)');

const service = z.union([
  target,
  z.object({ slot: z.number().int().min(0).max(63).optional(), target }).strict(),
  z.literal(false),
]);

const backoff = (baseMs: number, capMs: number) =>
  z
    .object({
      baseMs: z.number().int().min(1).max(3_600_000).default(baseMs),
      capMs: z.number().int().min(1).max(24 * 3_600_000).default(capMs),
      factor: z.number().min(1).max(10).default(2),
      minMs: z.number().int().min(0).max(3_600_000).default(100),
    })
    .strict()
    .prefault({})
    .refine((b) => b.capMs >= b.baseMs && b.capMs >= b.minMs, { message: 'capMs must be at least baseMs and minMs' });

const schema = z
  .object({
    broker: z
      .object({
        url: z.string().regex(/^https?:\/\/[^\s/]+(\/.*)?$/, 'must be an http(s) URL'),
        /** "sha256//BASE64" of the broker API's TLS public key (certunnel init prints it). */
        pin: z.string().refine(isTlsPin, 'must be sha256// followed by 44 base64 characters').optional(),
        /** Plain http: only to a TLS-terminating proxy on this host or a trusted network. */
        insecureHttp: z.boolean().default(false),
      })
      .strict()
      .optional(),
    stateDir: z.string().min(1).default('/var/lib/certunnel'),
    enroll: z
      .object({
        token: z.string().min(8).max(512).optional(),
        /** The broker's rule (api/tunnel.ts): a name it would refuse is a config error here, not a refused enrollment. */
        name: z.string().regex(DEVICE_NAME, 'lowercase letters, digits and inner hyphens (a DNS label)').optional(),
        hardwareSerial: z.string().min(1).max(128).optional(),
      })
      .strict()
      .prefault({}),
    transport: z.enum(['ssh2', 'openssh']).default('ssh2'),
    /** Local services by name; merged over the defaults (ssh → slot 0, http → slot 1); false disables one. */
    services: z.record(z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/), service).default({}),
    keepalive: z
      .object({
        intervalSeconds: z.number().int().min(1).max(3600).default(15),
        countMax: z.number().int().min(1).max(100).default(3),
      })
      .strict()
      .prefault({}),
    /** Reconnect delays. */
    backoff: backoff(1000, 60_000),
    /** Renewal retries while the broker's API is unreachable. */
    renewBackoff: backoff(5000, 300_000),
    connectTimeoutSeconds: z.number().int().min(1).max(300).default(20),
    apiTimeoutSeconds: z.number().int().min(1).max(300).default(30),
    ssh: z
      .object({
        /** Local address to dial the broker from (ssh -b). */
        bindAddress: z.string().refine((a) => isIP(a) !== 0, 'must be an IP address').optional(),
        /** The OpenSSH client the openssh transport runs. */
        command: z.string().min(1).default('ssh'),
      })
      .strict()
      .prefault({}),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
      .strict()
      .prefault({}),
  })
  .strict();

type Parsed = z.infer<typeof schema>;

export interface ServiceMapping {
  readonly name: string;
  readonly slot: number;
  readonly host: string;
  readonly port: number;
}

export type AgentConfig = Readonly<Omit<Parsed, 'services'>> & {
  /** Resolved: defaults merged, sorted by slot. */
  readonly services: readonly ServiceMapping[];
};

const DEFAULT_SERVICES: Readonly<Record<string, { slot: number; target: string }>> = Object.freeze({
  ssh: { slot: SLOT.ssh, target: '127.0.0.1:22' },
  http: { slot: SLOT.http, target: '127.0.0.1:80' },
});

function splitTarget(text: string): { host: string; port: number } {
  const m = HOST_PORT.exec(text);
  if (!m) throw new AgentError('CONFIG_INVALID', `${text} is not HOST:PORT`, EXIT.USAGE);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function resolveServices(input: Parsed['services']): ServiceMapping[] {
  const merged: Record<string, { slot?: number; target: string } | false> = { ...DEFAULT_SERVICES };
  for (const [name, value] of Object.entries(input)) {
    if (value === false) merged[name] = false;
    else if (typeof value === 'string') merged[name] = { slot: DEFAULT_SERVICES[name]?.slot, target: value };
    else merged[name] = { slot: value.slot ?? DEFAULT_SERVICES[name]?.slot, target: value.target };
  }
  const out: ServiceMapping[] = [];
  const slots = new Map<number, string>();
  for (const [name, value] of Object.entries(merged)) {
    if (value === false) continue;
    if (value.slot === undefined) throw new AgentError('CONFIG_INVALID', `config field services.${name}: needs a slot (only ssh and http have default slots)`, EXIT.USAGE);
    const other = slots.get(value.slot);
    if (other) throw new AgentError('CONFIG_INVALID', `config field services.${name}: slot ${value.slot} is already used by ${other}`, EXIT.USAGE);
    slots.set(value.slot, name);
    out.push({ name, slot: value.slot, ...splitTarget(value.target) });
  }
  return out.sort((a, b) => a.slot - b.slot);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

type PlainObject = Record<string, unknown>;
const isPlainObject = (v: unknown): v is PlainObject => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deep merge; undefined values in OVER leave BASE alone. */
function mergeConfig(base: PlainObject, over: PlainObject): PlainObject {
  const out: PlainObject = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    out[key] = isPlainObject(value) && isPlainObject(out[key]) ? mergeConfig(out[key] as PlainObject, value) : value;
  }
  return out;
}

/** Validates a config object; throws AgentError CONFIG_INVALID naming the first bad field. */
export function parseAgentConfig(input: unknown): AgentConfig {
  const result = schema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new AgentError('CONFIG_INVALID', `config field ${issue.path.join('.') || '(top level)'}: ${issue.message}`, EXIT.USAGE);
  }
  const data = result.data;
  if (data.broker && data.broker.url.startsWith('http:') && !data.broker.insecureHttp) {
    throw new AgentError('CONFIG_INVALID', 'config field broker.url: plain http needs broker.insecureHttp (the token and renewals would travel in clear)', EXIT.USAGE);
  }
  if (data.broker?.pin && data.broker.url.startsWith('http:')) {
    throw new AgentError('CONFIG_INVALID', 'config field broker.pin: a pin needs an https URL', EXIT.USAGE);
  }
  return deepFreeze({ ...data, services: resolveServices(data.services) });
}

export interface LoadAgentConfigOptions {
  /** The JSON file; optional when the flags say enough. */
  readonly file?: string;
  /** From flags (and the token from the environment), shaped like the file. */
  readonly overrides?: PlainObject;
}

export async function loadAgentConfig(options: LoadAgentConfigOptions): Promise<AgentConfig> {
  let file: unknown = {};
  if (options.file) {
    let text: string;
    try {
      text = await readFile(options.file, 'utf8');
    } catch (err) {
      throw new AgentError('CONFIG_INVALID', `cannot read ${options.file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, EXIT.USAGE);
    }
    try {
      file = JSON.parse(text);
    } catch {
      throw new AgentError('CONFIG_INVALID', `${options.file} is not valid JSON`, EXIT.USAGE);
    }
    if (!isPlainObject(file)) throw new AgentError('CONFIG_INVALID', `${options.file} must hold a JSON object`, EXIT.USAGE);
  }
  return parseAgentConfig(mergeConfig(file as PlainObject, options.overrides ?? {}));
}
