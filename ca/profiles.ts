/**
 * Certificate profiles: what certunnel's CA is willing to sign. Each limit is
 * a small named rule (as step-ca's validators); a profile is a list of rules
 * checked before anything is signed.
 */
import { CaError } from './errors.js';
import { signCertificate, type Certificate, type CertificateFields } from './cert.js';
import type { KeyPair, PublicKey } from './keys.js';

export type CertRule = (fields: CertificateFields) => void;

function violation(message: string): never {
  throw new CaError('CERT_PROFILE_VIOLATION', message);
}

export const maxValidity = (seconds: number): CertRule => (f) => {
  if (f.validBefore - f.validAfter > BigInt(seconds)) violation(`validity exceeds the profile's ${seconds} s limit`);
};

export const positiveValidity: CertRule = (f) => {
  if (f.validBefore <= f.validAfter) violation('validity window is empty');
};

export const nonZeroSerial: CertRule = (f) => {
  if (f.serial <= 0n || f.serial >= 1n << 64n) violation('serial must be a nonzero 64-bit number');
};

export const exactlyOnePrincipal = (pattern: RegExp): CertRule => (f) => {
  if (f.principals.length !== 1 || !pattern.test(f.principals[0]!)) violation('certificate must name exactly one valid principal');
};

export const atLeastOnePrincipal: CertRule = (f) => {
  if (f.principals.length === 0) violation('certificate must name at least one principal');
};

export const onlyExtensions = (allowed: readonly string[]): CertRule => (f) => {
  for (const name of Object.keys(f.extensions)) {
    if (!allowed.includes(name)) violation(`extension "${name}" is not allowed by this profile`);
  }
};

export const noCriticalOptions: CertRule = (f) => {
  if (Object.keys(f.criticalOptions).length > 0) violation('critical options are not allowed by this profile');
};

export const keyIdPattern = (pattern: RegExp): CertRule => (f) => {
  if (!pattern.test(f.keyId)) violation('key id does not match the profile');
};

export function checkRules(fields: CertificateFields, rules: readonly CertRule[]): void {
  for (const rule of rules) rule(fields);
}

/** A contiguous block of ports; first..last inclusive. */
export interface PortBlock {
  readonly first: number;
  readonly last: number;
}

const PORT_PRINCIPAL = /^(ports|reach)-([1-9][0-9]{0,4})-([1-9][0-9]{0,4})$/;

export function devicePrincipal(block: PortBlock): string {
  return `ports-${block.first}-${block.last}`;
}

export function operatorPrincipal(block: PortBlock): string {
  return `reach-${block.first}-${block.last}`;
}

/** Parses "ports-A-B" (kind "ports") or "reach-A-B" (kind "reach"); undefined if malformed. */
export function parsePortPrincipal(principal: string): { kind: 'ports' | 'reach'; block: PortBlock } | undefined {
  const m = PORT_PRINCIPAL.exec(principal);
  if (!m) return undefined;
  const first = Number(m[2]);
  const last = Number(m[3]);
  if (first > last || last > 65535) return undefined;
  return { kind: m[1] as 'ports' | 'reach', block: { first, last } };
}

const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;

export const DEVICE_CERT_MAX_VALIDITY_S = 7 * 24 * 3600;
export const OPERATOR_CERT_MAX_VALIDITY_S = 60 * 60;
export const HOST_CERT_MAX_VALIDITY_S = 5 * 366 * 24 * 3600;
/** Backdating absorbs clock skew between the broker and devices. */
export const BACKDATE_S = 60;

const deviceRules: readonly CertRule[] = [
  nonZeroSerial,
  positiveValidity,
  maxValidity(DEVICE_CERT_MAX_VALIDITY_S + BACKDATE_S),
  keyIdPattern(/^device:[A-Za-z0-9_-]{1,64}$/),
  exactlyOnePrincipal(/^ports-\d+-\d+$/),
  onlyExtensions(['permit-port-forwarding']),
  noCriticalOptions,
];

const operatorRules: readonly CertRule[] = [
  nonZeroSerial,
  positiveValidity,
  maxValidity(OPERATOR_CERT_MAX_VALIDITY_S + BACKDATE_S),
  keyIdPattern(/^operator:[^\s]{1,128}$/),
  exactlyOnePrincipal(/^reach-\d+-\d+$/),
  onlyExtensions(['permit-port-forwarding']),
  noCriticalOptions,
];

const hostRules: readonly CertRule[] = [
  nonZeroSerial,
  positiveValidity,
  maxValidity(HOST_CERT_MAX_VALIDITY_S + BACKDATE_S),
  atLeastOnePrincipal,
  onlyExtensions([]),
  noCriticalOptions,
];

function assertBlock(block: PortBlock): void {
  if (!Number.isInteger(block.first) || !Number.isInteger(block.last) || block.first < 1 || block.last > 65535 || block.first > block.last) {
    violation('port block is not a valid range');
  }
}

function window(now: Date, validitySeconds: number): { validAfter: bigint; validBefore: bigint } {
  const nowS = Math.floor(now.getTime() / 1000);
  return { validAfter: BigInt(nowS - BACKDATE_S), validBefore: BigInt(nowS + Math.floor(validitySeconds)) };
}

/** The user-certificate fields device and operator certificates share: one block, port forwarding only. */
function blockCertFields(
  req: { publicKey: PublicKey; deviceId: string; ports: PortBlock; serial: bigint; now: Date },
  keyId: string,
  principal: string,
  validitySeconds: number,
): CertificateFields {
  if (!DEVICE_ID.test(req.deviceId)) violation('device id has unexpected characters');
  assertBlock(req.ports);
  return {
    type: 'user',
    publicKey: req.publicKey,
    serial: req.serial,
    keyId,
    principals: [principal],
    ...window(req.now, validitySeconds),
    criticalOptions: {},
    extensions: { 'permit-port-forwarding': '' },
  };
}

export interface DeviceCertRequest {
  readonly ca: KeyPair;
  readonly publicKey: PublicKey;
  readonly deviceId: string;
  readonly ports: PortBlock;
  readonly serial: bigint;
  readonly now: Date;
  /** Default one hour. */
  readonly validitySeconds?: number;
}

/** A device certificate: key id device:<id>, principal ports-<first>-<last>, permit-port-forwarding only. */
export function signDeviceCert(req: DeviceCertRequest): Certificate {
  const fields = blockCertFields(req, `device:${req.deviceId}`, devicePrincipal(req.ports), req.validitySeconds ?? 3600);
  checkRules(fields, deviceRules);
  return signCertificate(fields, req.ca);
}

export interface OperatorCertRequest {
  readonly ca: KeyPair;
  readonly publicKey: PublicKey;
  /** Who the operator is (API key name or id); recorded in the key id. */
  readonly operator: string;
  readonly deviceId: string;
  readonly ports: PortBlock;
  readonly serial: bigint;
  readonly now: Date;
  /** Default ten minutes. */
  readonly validityMinutes?: number;
}

/** An operator certificate: principal reach-<first>-<last> for one device's block, minutes long. */
export function signOperatorCert(req: OperatorCertRequest): Certificate {
  const keyId = `operator:${req.operator.replace(/[^A-Za-z0-9_.@-]/g, '_')}:device:${req.deviceId}`;
  const fields = blockCertFields(req, keyId, operatorPrincipal(req.ports), (req.validityMinutes ?? 10) * 60);
  checkRules(fields, operatorRules);
  return signCertificate(fields, req.ca);
}

export interface HostCertRequest {
  readonly hostCa: KeyPair;
  readonly publicKey: PublicKey;
  readonly hostnames: readonly string[];
  readonly serial: bigint;
  readonly now: Date;
  /** Default one year. */
  readonly validitySeconds?: number;
}

/** The broker's host certificate, signed by the host CA, so devices trust the host CA rather than one key. */
export function signHostCert(req: HostCertRequest): Certificate {
  const fields: CertificateFields = {
    type: 'host',
    publicKey: req.publicKey,
    serial: req.serial,
    keyId: `host:${req.hostnames[0] ?? ''}`,
    principals: [...req.hostnames],
    ...window(req.now, req.validitySeconds ?? 365 * 24 * 3600),
    criticalOptions: {},
    extensions: {},
  };
  checkRules(fields, hostRules);
  return signCertificate(fields, req.hostCa);
}

/** A broker node of a cluster, as its relay certificate names it: `node:<id>` (key id and the one principal). */
const NODE_PRINCIPAL = /^node:(node_[a-z0-9]{16})$/;
export const NODE_CERT_MAX_VALIDITY_S = 24 * 3600;

export function nodePrincipal(nodeId: string): string {
  return `node:${nodeId}`;
}

/** The node id a relay certificate's principal names; undefined if it names none. */
export function parseNodePrincipal(principal: string): string | undefined {
  return NODE_PRINCIPAL.exec(principal)?.[1];
}

const nodeRules: readonly CertRule[] = [
  nonZeroSerial,
  positiveValidity,
  maxValidity(NODE_CERT_MAX_VALIDITY_S + BACKDATE_S),
  keyIdPattern(NODE_PRINCIPAL),
  exactlyOnePrincipal(NODE_PRINCIPAL),
  onlyExtensions([]),
  noCriticalOptions,
];

export interface NodeCertRequest {
  readonly ca: KeyPair;
  /** The node's relay key. */
  readonly publicKey: PublicKey;
  readonly nodeId: string;
  readonly serial: bigint;
  readonly now: Date;
  /** Default one hour. */
  readonly validitySeconds?: number;
}

/**
 * A node's relay certificate (the node-to-node link, docs/cluster.md): a user
 * certificate whose key id and one principal are node:<id>, with no extension
 * at all, so that neither the gateway nor sshd lets it forward or reach a port
 * (their principals are ports-A-B and reach-A-B), and the relay takes nothing else.
 */
export function signNodeCert(req: NodeCertRequest): Certificate {
  const principal = nodePrincipal(req.nodeId);
  const fields: CertificateFields = {
    type: 'user',
    publicKey: req.publicKey,
    serial: req.serial,
    keyId: principal,
    principals: [principal],
    ...window(req.now, req.validitySeconds ?? 3600),
    criticalOptions: {},
    extensions: {},
  };
  checkRules(fields, nodeRules);
  return signCertificate(fields, req.ca);
}
