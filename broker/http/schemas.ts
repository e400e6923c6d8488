/**
 * Request validation at the edge (zod): unknown fields are refused, sizes are
 * bounded, and a failure becomes BAD_REQUEST naming the field — never the value.
 */
import { z } from 'zod';
import { API_KEY_NAME, API_KEY_ROLES, DEVICE_NAME, DEVICE_SORTS, DEVICE_STATUSES, HARDWARE_SERIAL, LABEL_KEY, MAX_LABELS, TOKEN_BATCH, TOKEN_STATUSES, TRUST_ROOT_NAMES } from '../../api/index.js';
import { BrokerError } from '../core/errors.js';

const name = z.string().min(1).max(63).regex(DEVICE_NAME, 'lowercase letters, digits and inner hyphens (a DNS label)');
const serial = z.string().min(1).max(128).regex(HARDWARE_SERIAL, 'printable ASCII without spaces');
const batch = z.string().min(1).max(64).regex(TOKEN_BATCH, 'letters, digits, dot, underscore, hyphen');
const keyLine = z.string().min(1).max(8192);
const armored = z.string().min(1).max(8192);
/** AGENT_CAPABILITIES values; unknown ones are accepted and ignored (a newer agent may say more). */
const capabilities = z.array(z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces')).max(16);

export const enrollSchema = z.strictObject({
  token: z.string().min(1).max(256),
  publicKey: keyLine,
  name: name.optional(),
  hardwareSerial: serial.optional(),
  capabilities: capabilities.optional(),
});

export const renewSchema = z.strictObject({
  deviceId: z.string().min(1).max(64).regex(/^dev_[a-z2-7]{16}$/, 'a device id'),
  timestamp: z.number().int().min(0).max(2 ** 40),
  nonce: z.string().min(16).max(64).regex(/^[A-Za-z0-9_-]+$/, 'base64url'),
  newPublicKey: keyLine.optional(),
  signature: armored,
  newKeySignature: armored.optional(),
  capabilities: capabilities.optional(),
});

export const mintTokensSchema = z.strictObject({
  count: z.number().int().min(1).max(100000).default(1),
  batch: batch.optional(),
  ttlSeconds: z.number().int().min(60).max(366 * 86400).optional(),
  bindNames: z.array(name).max(100000).optional(),
  bindSerials: z.array(serial).max(100000).optional(),
});

export const revokeTokensSchema = z.union([z.strictObject({ id: z.string().min(1).max(64) }), z.strictObject({ batch })]);

export const revokeDeviceSchema = z.strictObject({ reason: z.string().max(500).optional() });

export const createApiKeySchema = z.strictObject({
  role: z.enum(API_KEY_ROLES),
  name: z.string().min(1).max(100).regex(API_KEY_NAME),
  expiresAt: z.iso.datetime({ offset: true }).optional(),
});

export const revokeApiKeySchema = z.strictObject({ force: z.boolean().optional() });

export const startRotationSchema = z.strictObject({ root: z.enum(TRUST_ROOT_NAMES) });

export const commitRotationSchema = z.strictObject({ force: z.boolean().optional() });

const limit = z.coerce.number().int().min(1).max(1000).optional();
const cursor = z.string().max(512).optional();

export const listTokensQuery = z.strictObject({
  batch: batch.optional(),
  status: z.enum(TOKEN_STATUSES).optional(),
  limit,
  cursor,
});

export const listDevicesQuery = z.strictObject({
  status: z.enum(DEVICE_STATUSES).optional(),
  name: z.string().max(63).optional(),
  label: z.string().max(200).regex(/^[^=]+=.*$/, 'KEY=VALUE').optional(),
  online: z.enum(['true', 'false']).optional(),
  sort: z.enum(DEVICE_SORTS).optional(),
  limit,
  cursor,
});

/** Printable characters, no control characters (labels are shown in the console and the CLI). */
const labelValue = z.string().max(200).regex(/^[^\p{Cc}]*$/u, 'no control characters');

export const setLabelsSchema = z.strictObject({
  labels: z.record(z.string().regex(LABEL_KEY, 'letters, digits, dot, underscore, slash, hyphen (1-63)'), labelValue).refine((l) => Object.keys(l).length <= MAX_LABELS, `at most ${MAX_LABELS} labels`),
});

export const listAuditQuery = z.strictObject({
  since: z.iso.datetime({ offset: true }).optional(),
  action: z.string().max(64).optional(),
  actor: z.string().max(128).optional(),
  target: z.string().max(128).optional(),
  until: z.iso.datetime({ offset: true }).optional(),
  limit,
  cursor,
});

export function parseWith<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const result = schema.safeParse(input ?? {});
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.path.join('.') || 'body';
    const what = issue.code === 'unrecognized_keys' ? `unknown field(s): ${issue.keys.join(', ')}` : issue.message;
    throw new BrokerError('BAD_REQUEST', `${field}: ${what}`);
  }
  return result.data;
}
