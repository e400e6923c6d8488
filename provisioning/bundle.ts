/**
 * The per-device config bundle a batch writes (one JSON file, 0600, because
 * it holds the enrollment token) and `flash` puts into an image:
 *
 *   {
 *     "format": "certunnel-device-bundle/1",
 *     "batch": "line-7", "index": 1, "tokenId": "tok_…", "expiresAt": "2026-…Z",
 *     "bindName": "kiosk-0001" | null, "bindSerial": "SN123" | null,
 *     "broker": {                      // what the factory saw at GET /v1/ca, over the pinned connection
 *       "url": "https://broker.example.net:8443", "pin": "sha256//…",
 *       "ssh": { "host": "…", "port": 2222, "username": "tunnel" },
 *       "hostKey": "ssh-ed25519 …", "hostCertificateAuthority": "ssh-ed25519 …",
 *       "userCertificateAuthority": "ssh-ed25519 …"
 *     },
 *     "agent": { … }                   // exactly /etc/certunnel/agent.json (agent/config.ts)
 *   }
 *
 * The token secret appears once, at agent.enroll.token: it is what
 * `certunnel agent run` enrolls with.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { parseAgentConfig } from '../agent/config.js';
import type { CaResponse } from '../api/index.js';
import { isTlsPin } from '../ca/index.js';
import { ProvisionError } from './errors.js';

export const BUNDLE_FORMAT = 'certunnel-device-bundle/1';
export const DEFAULT_STATE_DIR = '/var/lib/certunnel';

/**
 * What provisioning reads of GET /v1/ca (api CaResponse): of the SSH
 * endpoint only the address and login, since the response carries the keys
 * at its top level too.
 */
export type BrokerCaResponse = Omit<CaResponse, 'ssh'> & { ssh: Pick<CaResponse['ssh'], 'host' | 'port' | 'username'> };

const brokerSchema = z.strictObject({
  url: z.string().regex(/^https?:\/\/[^\s/]+(\/.*)?$/),
  pin: z.string().refine(isTlsPin).nullable(),
  ssh: z.strictObject({ host: z.string().min(1), port: z.number().int().min(1).max(65535), username: z.string().min(1) }),
  hostKey: z.string().min(1),
  hostCertificateAuthority: z.string().min(1),
  userCertificateAuthority: z.string().min(1),
});

const bundleSchema = z.strictObject({
  format: z.literal(BUNDLE_FORMAT),
  batch: z.string().min(1).max(64),
  index: z.number().int().min(1),
  tokenId: z.string().regex(/^tok_[a-z2-7]+$/),
  expiresAt: z.iso.datetime(),
  bindName: z.string().nullable(),
  bindSerial: z.string().nullable(),
  broker: brokerSchema,
  agent: z.record(z.string(), z.unknown()),
});

export type BrokerInfo = z.infer<typeof brokerSchema>;
export type DeviceBundle = z.infer<typeof bundleSchema>;
/** agent.json, as the agent reads it (agent/config.ts), before defaults. */
export type AgentConfigFile = Record<string, unknown>;

export interface AgentConfigInput {
  readonly url: string;
  readonly pin: string | null;
  readonly token: string;
  readonly name: string | null;
  readonly serial: string | null;
  readonly services: Readonly<Record<string, unknown>>;
  readonly stateDir: string;
  /** Extra agent settings (transport, keepalive, …): never broker, enroll, stateDir. */
  readonly template: Readonly<Record<string, unknown>>;
}

/** The agent config a device gets; validated by the agent's own parser so that `agent run` accepts it. */
export function buildAgentConfig(input: AgentConfigInput): AgentConfigFile {
  for (const field of ['broker', 'enroll', 'stateDir']) {
    if (field in input.template) throw new ProvisionError('BAD_ARGUMENT', `the agent template must not set ${field}: the batch fills it in`);
  }
  const enroll: Record<string, string> = { token: input.token };
  if (input.name) enroll.name = input.name;
  if (input.serial) enroll.hardwareSerial = input.serial;
  const broker: Record<string, unknown> = { url: input.url };
  if (input.pin) broker.pin = input.pin;
  if (input.url.startsWith('http:')) broker.insecureHttp = true;
  const config: AgentConfigFile = {
    broker,
    stateDir: input.stateDir,
    enroll,
    ...input.template,
    services: { ...((input.template.services as object | undefined) ?? {}), ...input.services },
  };
  try {
    parseAgentConfig(config);
  } catch (err) {
    throw new ProvisionError('BAD_ARGUMENT', `the device agent config would be refused: ${(err as Error).message}`, 1, { cause: err });
  }
  return config;
}

export function parseBundle(value: unknown, source = 'bundle'): DeviceBundle {
  const result = bundleSchema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ProvisionError('BUNDLE_INVALID', `${source}: field ${issue.path.join('.') || '(top level)'}: ${issue.message}`);
  }
  try {
    parseAgentConfig(result.data.agent);
  } catch (err) {
    throw new ProvisionError('BUNDLE_INVALID', `${source}: agent config: ${(err as Error).message}`);
  }
  const enroll = result.data.agent.enroll as { token?: unknown } | undefined;
  if (typeof enroll?.token !== 'string') throw new ProvisionError('BUNDLE_INVALID', `${source}: agent.enroll.token is missing`);
  return result.data;
}

export async function readBundle(path: string): Promise<DeviceBundle> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ProvisionError('BUNDLE_INVALID', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProvisionError('BUNDLE_INVALID', `${path} is not valid JSON`);
  }
  return parseBundle(value, path);
}

export function renderBundle(bundle: DeviceBundle): string {
  return `${JSON.stringify(bundle, null, 2)}\n`;
}

/** "ssh=127.0.0.1:22", "http=127.0.0.1:8080", "mqtt@2=127.0.0.1:1883", "http=off" → the agent's services map. */
export function parseServiceFlags(flags: readonly string[]): Record<string, unknown> {
  const services: Record<string, unknown> = {};
  for (const flag of flags) {
    const m = /^([a-z][a-z0-9_-]{0,31})(?:@(\d{1,2}))?=(.+)$/.exec(flag);
    if (!m) throw new ProvisionError('BAD_ARGUMENT', `--service ${flag}: expected NAME=HOST:PORT, NAME@SLOT=HOST:PORT or NAME=off`);
    const [, name, slot, target] = m as unknown as [string, string, string | undefined, string];
    if (target === 'off') services[name] = false;
    else services[name] = slot === undefined ? target : { slot: Number(slot), target };
  }
  return services;
}
