/**
 * The node-to-node link (broker/ssh/relay-server.ts, relay-client.ts, wired by
 * broker/compose/cluster-relay.ts) against a real broker with
 * cluster.internalListen, a real device tunnel (ssh -R) and real relay
 * clients: a node the CA vouches for and the registry knows reaches the
 * device; every attack is refused with its code, audited, and opens nothing
 * (the device's service sees no connection).
 */
import test from 'ava';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { formatCertificate, formatPublicKey, generateKeyPair, loadKeyPair, parsePublicKey, signDeviceCert, signNodeCert, signOperatorCert, type KeyPair } from '../../../ca/index.js';
import type { AuditEventView, ListAuditResponse } from '../../../api/index.js';
import { loadNodeIdentity, newNodeIdentity } from '../../../broker/compose/node-identity.js';
import { checkNodeCertificate, checkUserCertificate, RelayClient, RelayServer, type RelayPeer } from '../../../broker/ssh/index.js';
import { withFleet, type Fleet } from '../../../testkit/operator-fixture.js';

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };

interface NodeB {
  readonly id: string;
  readonly peer: RelayPeer;
  readonly userCa: KeyPair;
}

async function nodeB(f: Fleet): Promise<NodeB> {
  const { id } = await loadNodeIdentity({ node: join(f.b.dir, 'node.json') });
  const row = await f.b.broker.store.findNode(id);
  if (!row?.internalAddress || !row.relayKey) throw new Error('node B did not register its relay');
  const [host, port] = row.internalAddress.split(':');
  const userCa = await loadKeyPair(join(f.b.dir, 'ca', 'user_ca'));
  clusterCa.set(f, userCa);
  return { id, peer: { id, host: host!, port: Number(port), relayKey: parsePublicKey(row.relayKey) }, userCa };
}

/** A relay client as node NODEID with KEY and a certificate signed by CA (SERIAL); it trusts the cluster's CA (TRUSTED) to verify node B. */
function clientOf(f: Fleet, nodeId: string, key: KeyPair, ca: KeyPair, serial = 9_000_000n + BigInt(Math.floor(Math.random() * 1e6)), trusted = clusterCa.get(f) ?? ca): RelayClient {
  const cert = signNodeCert({ ca, publicKey: key.publicKey, nodeId, serial, now: new Date() });
  return new RelayClient({
    nodeId, key, certificateLine: () => formatCertificate(cert, cert.keyId), clock: () => new Date(), logger: quiet,
    certDeps: { trustedCaKeys: [trusted.publicKey], isRevoked: () => false },
  });
}

const clusterCa = new WeakMap<Fleet, KeyPair>();

async function register(f: Fleet, nodeId: string, key: KeyPair): Promise<void> {
  await f.b.broker.store.registerNode({
    id: nodeId, name: 'attacker-or-peer', sshEndpoint: '127.0.0.1:1', apiUrl: null, internalAddress: '127.0.0.1:1', relayKey: formatPublicKey(key.publicKey), version: 'test', startedAt: new Date(),
  });
}

async function refusal(p: Promise<Duplex>): Promise<string> {
  try {
    const stream = await p;
    stream.destroy();
    return 'OPENED';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

async function audits(f: Fleet, action: string): Promise<AuditEventView[]> {
  return (await f.b.call<ListAuditResponse>(f.b.admin, 'GET', `/v1/audit?limit=1000&action=${action}`)).items;
}

function get(stream: Duplex, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    stream.on('data', (c: Buffer) => (out += c.toString()));
    stream.once('end', () => resolve(out));
    stream.once('error', reject);
    stream.end(`GET /echo HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
}

const CLUSTER = { config: { cluster: { internalListen: '127.0.0.1:0' } } };

test('ok/a registered node the CA vouches for reaches the device through the node holding its tunnel; audited', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-r', { connect: true });
    const b = await nodeB(f);
    const a = newNodeIdentity('node-a');
    const key = generateKeyPair();
    await register(f, a.id, key);
    const client = clientOf(f, a.id, key, b.userCa);
    try {
      const stream = await client.dial(b.peer, dev.grant.deviceId, dev.grant.ports.first + 1, { address: '127.0.0.1', port: 0 });
      const page = await get(stream, 'kiosk-r');
      t.regex(page, /^HTTP\/1\.1 200/);
      t.is(dev.http!.connections(), 1);
      const reached = await audits(f, 'ssh.relay.reach');
      t.is(reached.length, 1);
      t.like(reached[0], { actor: `node:${a.id}`, target: dev.grant.deviceId, outcome: 'allowed' });
    } finally {
      client.close();
    }
  }, CLUSTER));

test('fail/attacks on the link: each refused with its code, audited, nothing opened', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-x', { connect: true });
    const b = await nodeB(f);
    const origin = { address: '127.0.0.1', port: 0 };
    const http = dev.grant.ports.first + 1;
    const outcomes: Record<string, string> = {};
    const clients: RelayClient[] = [];
    const attempt = async (name: string, client: RelayClient, deviceId = dev.grant.deviceId, port = http): Promise<void> => {
      clients.push(client);
      outcomes[name] = await refusal(client.dial(b.peer, deviceId, port, origin));
    };
    try {
      // A key the cluster's CA did not sign (its own CA), for a registered node id.
      const rogue = newNodeIdentity('rogue');
      const rogueKey = generateKeyPair();
      await register(f, rogue.id, rogueKey);
      await attempt('fail/cert-not-signed-by-cluster-ca', clientOf(f, rogue.id, rogueKey, generateKeyPair()));
      // Signed by the cluster's CA, but for a node the registry does not know (never registered, or removed).
      const unknown = newNodeIdentity('unknown');
      await attempt('fail/unknown-node', clientOf(f, unknown.id, generateKeyPair(), b.userCa));
      // A registered node that has stopped.
      const stopped = newNodeIdentity('stopped');
      const stoppedKey = generateKeyPair();
      await register(f, stopped.id, stoppedKey);
      await f.b.broker.store.markNodeStopped(stopped.id, new Date());
      await attempt('fail/stopped-node', clientOf(f, stopped.id, stoppedKey, b.userCa));
      // A CA-signed certificate for a registered node, but not for the key it registered (a stolen or old certificate).
      const rekeyed = newNodeIdentity('rekeyed');
      await register(f, rekeyed.id, generateKeyPair());
      await attempt('fail/key-not-registered', clientOf(f, rekeyed.id, generateKeyPair(), b.userCa));
      // A registered node whose certificate was revoked (its serial denied).
      const revokedNode = newNodeIdentity('revoked');
      const revokedKey = generateKeyPair();
      await register(f, revokedNode.id, revokedKey);
      f.b.broker.revocations.deny({ serials: [77_000_001n] });
      await attempt('fail/revoked-node-cert', clientOf(f, revokedNode.id, revokedKey, b.userCa, 77_000_001n));

      // A genuine node asking for what it may not have.
      const a = newNodeIdentity('node-a');
      const aKey = generateKeyPair();
      await register(f, a.id, aKey);
      await attempt('fail/port-outside-block', clientOf(f, a.id, aKey, b.userCa), dev.grant.deviceId, dev.grant.ports.last + 1);
      await attempt('fail/unknown-device', clientOf(f, a.id, aKey, b.userCa), 'dev_nosuchdevice', http);
      const other = await f.enroll('kiosk-y');
      await f.b.call(f.b.admin, 'POST', `/v1/devices/${other.grant.deviceId}/revoke`, { reason: 'test' });
      await attempt('fail/revoked-device', clientOf(f, a.id, aKey, b.userCa), other.grant.deviceId, other.grant.ports.first + 1);
      await f.b.call(f.b.admin, 'POST', `/v1/devices/${dev.grant.deviceId}/revoke`, { reason: 'test' });
      await attempt('fail/device-revoked-while-connected', clientOf(f, a.id, aKey, b.userCa));

      t.deepEqual(outcomes, {
        'fail/cert-not-signed-by-cluster-ca': 'RELAY_REFUSED',
        'fail/unknown-node': 'RELAY_REFUSED',
        'fail/stopped-node': 'RELAY_REFUSED',
        'fail/key-not-registered': 'RELAY_REFUSED',
        'fail/revoked-node-cert': 'RELAY_REFUSED',
        'fail/port-outside-block': 'PORT_NOT_OWNED',
        'fail/unknown-device': 'DEVICE_UNKNOWN',
        'fail/revoked-device': 'DEVICE_REVOKED',
        'fail/device-revoked-while-connected': 'DEVICE_REVOKED',
      });
      const authReasons = (await audits(f, 'ssh.relay.auth')).map((e) => e.details.reason).sort();
      t.deepEqual(authReasons, ['CERT_UNKNOWN_CA', 'NODE_KEY_MISMATCH', 'NODE_STOPPED', 'NODE_UNKNOWN', 'REVOKED']);
      const channelReasons = (await audits(f, 'ssh.relay.channel')).map((e) => e.details.reason).sort();
      t.deepEqual(channelReasons, ['DEVICE_REVOKED', 'DEVICE_REVOKED', 'DEVICE_UNKNOWN', 'PORT_NOT_OWNED']);
      t.is((await audits(f, 'ssh.relay.reach')).length, 0, 'nothing relayed');
      t.is(dev.http!.connections(), 0, 'the device service saw no connection');
    } finally {
      for (const c of clients) c.close();
    }
  }, CLUSTER));

test('fail/a relay endpoint that is not the registered node: no certificate of the cluster, or another node\'s → RELAY_PEER_UNVERIFIED', (t) =>
  withFleet(async (f) => {
    const b = await nodeB(f);
    const a = newNodeIdentity('node-a');
    const aKey = generateKeyPair();
    await register(f, a.id, aKey);
    const impostorKey = generateKeyPair();
    const other = newNodeIdentity('other');
    const cases: Array<[string, () => string]> = [
      ['fail/impostor-own-ca', () => formatCertificate(signNodeCert({ ca: generateKeyPair(), publicKey: impostorKey.publicKey, nodeId: b.id, serial: 5n, now: new Date() }), 'x')],
      ['fail/impostor-other-node', () => formatCertificate(signNodeCert({ ca: b.userCa, publicKey: impostorKey.publicKey, nodeId: other.id, serial: 6n, now: new Date() }), 'x')],
    ];
    for (const [name, banner] of cases) {
      let opened = 0;
      const server = new RelayServer({
        hostKey: impostorKey, certificateLine: banner, certDeps: { trustedCaKeys: [b.userCa.publicKey], isRevoked: () => false }, clock: () => new Date(),
        lookupNode: async () => undefined, downAfterMs: 20_000, logger: quiet, audit: () => undefined,
        openTarget: async () => {
          opened += 1;
          throw new Error('unreachable');
        },
      });
      const { port } = await server.listen(0, '127.0.0.1');
      const client = clientOf(f, a.id, aKey, b.userCa);
      try {
        // The registry pins the impostor's key here (as if it had been written there): the certificate check still refuses it.
        const code = await refusal(client.dial({ id: b.id, host: '127.0.0.1', port, relayKey: impostorKey.publicKey }, 'dev_x', 20000, { address: '127.0.0.1', port: 0 }));
        t.is(code, 'RELAY_PEER_UNVERIFIED', name);
        // And a genuine certificate at an address whose key is not the pinned one.
        t.is(opened, 0, name);
      } finally {
        client.close();
        await server.close();
      }
    }
    const client = clientOf(f, a.id, aKey, b.userCa);
    try {
      t.is(await refusal(client.dial({ ...b.peer, relayKey: generateKeyPair().publicKey }, 'dev_x', 20000, { address: '127.0.0.1', port: 0 })), 'RELAY_PEER_UNVERIFIED', 'fail/pinned-key-differs');
    } finally {
      client.close();
    }
  }, CLUSTER));

test('table/a node certificate is no device or operator certificate, and neither of those is a node certificate', (t) => {
  const ca = generateKeyPair();
  const now = new Date();
  const deps = { trustedCaKeys: [ca.publicKey], isRevoked: () => false };
  const node = signNodeCert({ ca, publicKey: generateKeyPair().publicKey, nodeId: newNodeIdentity('n').id, serial: 11n, now });
  const gateway = checkUserCertificate(node.blob, now, deps);
  t.like(gateway, { ok: false, reason: 'PRINCIPAL_INVALID' }, 'fail/node-cert-at-the-gateway');
  t.like(checkNodeCertificate(node, now, deps), { ok: true }, 'ok/node-cert-at-the-relay');
  const operator = signOperatorCert({ ca, publicKey: generateKeyPair().publicKey, operator: 'op', deviceId: 'dev_1', ports: { first: 20000, last: 20001 }, serial: 12n, now });
  t.like(checkNodeCertificate(operator, now, deps), { ok: false, reason: 'NOT_A_NODE' }, 'fail/operator-cert-at-the-relay');
  const device = signDeviceCert({ ca, publicKey: generateKeyPair().publicKey, deviceId: 'dev_1', ports: { first: 20000, last: 20001 }, serial: 13n, now });
  t.like(checkNodeCertificate(device, now, deps), { ok: false, reason: 'NOT_A_NODE' }, 'fail/device-cert-at-the-relay');
  t.like(checkNodeCertificate(node, new Date(now.getTime() + 2 * 3600_000), deps), { ok: false, reason: 'CERT_EXPIRED' }, 'fail/expired');
  t.like(checkNodeCertificate(node, now, { ...deps, trustedCaKeys: [generateKeyPair().publicKey] }), { ok: false, reason: 'CERT_UNKNOWN_CA' }, 'fail/other-ca');
});
