/**
 * Every StoreTx operation bound to its table module's function, and which
 * of them only read. Where an operation runs (a read connection, a
 * group-commit member of its own, or the caller's transaction) is the
 * WithDb it is bound with: open.ts decides.
 */
import * as apiKeys from './api-keys.js';
import * as audit from './audit.js';
import * as certs from './certs.js';
import type { Db } from './db.js';
import * as devices from './devices.js';
import * as nodes from './nodes.js';
import * as ports from './ports.js';
import * as rotations from './rotations.js';
import * as tokens from './tokens.js';
import type { StoreTx } from './types.js';

/** How a bound operation gets its Db: a read connection, a group-commit member of its own, or the transaction's. */
export type WithDb = <R>(operation: string, body: (db: Db) => Promise<R>) => Promise<R>;

/**
 * Operations that only read, each in one statement: outside a transaction
 * they run on a read connection. Every other operation writes.
 */
const READ_OPERATIONS: ReadonlySet<string> = new Set<keyof StoreTx>([
  'findTokenByHash', 'listTokens', 'countActiveTokens', 'listTokenBatches',
  'findDevice', 'findDeviceByName', 'findDeviceByFingerprint', 'findActiveDeviceByPort', 'listDevices', 'countDevicesByStatus',
  'portPoolUsage',
  'findCertificate', 'findIssuedCertificate', 'latestCertificateOfDevice', 'listCertificatesOfDevice', 'latestCertificatesOfDevices', 'findDeviceWithLatestCertificate', 'listRevokedUnexpiredSerials', 'listRevokedDeviceIds', 'isSerialRevoked',
  'findApiKey', 'listApiKeys',
  'listNodes', 'findNode', 'countOnlineDevicesByNode',
  'activeRotation', 'findRotation', 'listRotations', 'rotationDeviceCounts',
  'listAudit', 'countAudit',
]);

export function isReadOperation(operation: string): boolean {
  return READ_OPERATIONS.has(operation);
}

/** Binds every operation; errors leave as BrokerError only. */
export function bindOps(withDb: WithDb): StoreTx {
  const op =
    <A extends unknown[], R>(name: keyof StoreTx, fn: (db: Db, ...args: A) => Promise<R>) =>
    (...args: A): Promise<R> =>
      withDb(name, (db) => fn(db, ...args));
  return {
    insertTokens: op('insertTokens', tokens.insertTokens),
    redeemToken: op('redeemToken', tokens.redeemToken),
    findTokenByHash: op('findTokenByHash', tokens.findTokenByHash),
    listTokens: op('listTokens', tokens.listTokens),
    revokeTokens: op('revokeTokens', tokens.revokeTokens),
    countActiveTokens: op('countActiveTokens', tokens.countActiveTokens),
    listTokenBatches: op('listTokenBatches', tokens.listTokenBatches),

    insertDevice: op('insertDevice', devices.insertDevice),
    findDevice: op('findDevice', devices.findDevice),
    findDeviceByName: op('findDeviceByName', devices.findDeviceByName),
    findDeviceByFingerprint: op('findDeviceByFingerprint', devices.findDeviceByFingerprint),
    findActiveDeviceByPort: op('findActiveDeviceByPort', devices.findActiveDeviceByPort),
    listDevices: op('listDevices', devices.listDevices),
    setDeviceLabels: op('setDeviceLabels', devices.setDeviceLabels),
    markDeviceRevoked: op('markDeviceRevoked', devices.markDeviceRevoked),
    updateDeviceKey: op('updateDeviceKey', devices.updateDeviceKey),
    setDeviceOnline: op('setDeviceOnline', devices.setDeviceOnline),
    countDevicesByStatus: op('countDevicesByStatus', devices.countDevicesByStatus),

    registerNode: op('registerNode', nodes.registerNode),
    heartbeatNode: op('heartbeatNode', nodes.heartbeatNode),
    markNodeStopped: op('markNodeStopped', nodes.markNodeStopped),
    markNodeDown: op('markNodeDown', nodes.markNodeDown),
    countOnlineDevicesByNode: op('countOnlineDevicesByNode', nodes.countOnlineDevicesByNode),
    listNodes: op('listNodes', nodes.listNodes),
    findNode: op('findNode', nodes.findNode),
    clearPresenceOfNode: op('clearPresenceOfNode', nodes.clearPresenceOfNode),
    insertNodeJoinToken: op('insertNodeJoinToken', nodes.insertNodeJoinToken),
    redeemNodeJoinToken: op('redeemNodeJoinToken', nodes.redeemNodeJoinToken),

    startRotation: op('startRotation', rotations.startRotation),
    setRotationPhase: op('setRotationPhase', rotations.setRotationPhase),
    ackRotation: op('ackRotation', rotations.ackRotation),
    finishRotation: op('finishRotation', rotations.finishRotation),
    activeRotation: op('activeRotation', rotations.activeRotation),
    findRotation: op('findRotation', rotations.findRotation),
    listRotations: op('listRotations', rotations.listRotations),
    rotationDeviceCounts: op('rotationDeviceCounts', rotations.rotationDeviceCounts),

    allocatePortBlock: op('allocatePortBlock', ports.allocatePortBlock),
    releasePortBlock: op('releasePortBlock', ports.releasePortBlock),
    portPoolUsage: op('portPoolUsage', ports.portPoolUsage),

    nextSerial: op('nextSerial', certs.nextSerial),
    insertCertificate: op('insertCertificate', certs.insertCertificate),
    findCertificate: op('findCertificate', certs.findCertificate),
    findIssuedCertificate: op('findIssuedCertificate', certs.findIssuedCertificate),
    latestCertificateOfDevice: op('latestCertificateOfDevice', certs.latestCertificateOfDevice),
    listCertificatesOfDevice: op('listCertificatesOfDevice', certs.listCertificatesOfDevice),
    latestCertificatesOfDevices: op('latestCertificatesOfDevices', certs.latestCertificatesOfDevices),
    findDeviceWithLatestCertificate: op('findDeviceWithLatestCertificate', devices.findDeviceWithLatestCertificate),
    revokeCertificatesOfDevice: op('revokeCertificatesOfDevice', certs.revokeCertificatesOfDevice),
    revokeCertificatesOfKey: op('revokeCertificatesOfKey', certs.revokeCertificatesOfKey),
    listRevokedUnexpiredSerials: op('listRevokedUnexpiredSerials', certs.listRevokedUnexpiredSerials),
    listRevokedDeviceIds: op('listRevokedDeviceIds', certs.listRevokedDeviceIds),
    isSerialRevoked: op('isSerialRevoked', certs.isSerialRevoked),
    pruneCertificates: op('pruneCertificates', certs.pruneCertificates),
    nextKrlVersion: op('nextKrlVersion', certs.nextKrlVersion),

    insertApiKey: op('insertApiKey', apiKeys.insertApiKey),
    findApiKey: op('findApiKey', apiKeys.findApiKey),
    touchApiKey: op('touchApiKey', apiKeys.touchApiKey),
    listApiKeys: op('listApiKeys', apiKeys.listApiKeys),
    revokeApiKey: op('revokeApiKey', apiKeys.revokeApiKey),

    insertNonce: op('insertNonce', audit.insertNonce),
    pruneNonces: op('pruneNonces', audit.pruneNonces),
    appendAudit: op('appendAudit', audit.appendAudit),
    listAudit: op('listAudit', audit.listAudit),
    pruneAuditFailures: op('pruneAuditFailures', audit.pruneAuditFailures),
    countAudit: op('countAudit', audit.countAudit),
  };
}
