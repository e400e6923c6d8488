/**
 * agent/ssh2-cert-auth.ts: the ssh2 client logs in with an OpenSSH
 * certificate, against the embedded gateway and against a real sshd.
 */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import type { ClientChannel } from 'ssh2';
import { formatPublicKey, generateKeyPair, parseCertificate, publicKeyBlob, signDeviceCert, signHostCert, type Certificate, type KeyPair, type PublicKey } from '../../ca/index.js';
import { certificateAuthHandler, checkSsh2Version } from '../../agent/ssh2-cert-auth.js';
import { exchange, freePortBlock, isListening, startDeviceService, startGatewayEnv, type DeviceService } from '../../testkit/gateway.js';
import { sshKeygenOk, withTempDir } from '../../testkit/openssh.js';
import { startSshd } from '../../testkit/sshd.js';

interface Connected {
  readonly client: ssh2.Client;
  /** forwardIn(127.0.0.1, PORT): resolves true if the server agreed. */
  forward(port: number): Promise<boolean>;
  end(): void;
}

/** Connects an ssh2 client with the shim; forwarded connections go to SVC, as the device agent does. */
function connectWithCert(options: {
  port: number;
  hostKey: PublicKey;
  username?: string;
  key: KeyPair;
  cert: Certificate;
  svc?: DeviceService;
}): Promise<Connected> {
  const client = new ssh2.Client();
  return new Promise((resolve, reject) => {
    // ssh2 may report several errors (auth failure, then the reset): the first decides.
    client.on('error', () => undefined);
    client.once('error', reject);
    client.once('ready', () => {
      client.off('error', reject);
      resolve({
        client,
        forward: (port) => new Promise((res) => client.forwardIn('127.0.0.1', port, (err) => res(!err))),
        end: () => client.end(),
      });
    });
    client.on('tcp connection', (_info, accept) => {
      const channel: ClientChannel = accept();
      if (!options.svc) return channel.close();
      const local = connect({ host: '127.0.0.1', port: options.svc.port });
      channel.pipe(local).pipe(channel);
      local.on('error', () => channel.close());
    });
    client.connect({
      host: '127.0.0.1',
      port: options.port,
      username: options.username ?? 'tunnel',
      hostVerifier: (key: Buffer) => key.equals(publicKeyBlob(options.hostKey)),
      authHandler: certificateAuthHandler(client, { username: options.username ?? 'tunnel', key: options.key, certificate: options.cert }),
      readyTimeout: 10_000,
    });
  });
}

test('checkSsh2Version accepts only the release the shim was written against', (t) => {
  t.notThrows(() => checkSsh2Version('1.17.0'));
  t.throws(() => checkSsh2Version('1.17.1'), { message: /1\.17\.0/ });
  t.throws(() => checkSsh2Version('2.0.0'));
});

test('the shim refuses a certificate for another key', (t) => {
  const ca = generateKeyPair();
  const cert = signDeviceCert({ ca, publicKey: generateKeyPair().publicKey, deviceId: 'd', ports: { first: 2, last: 3 }, serial: 1n, now: new Date() });
  t.throws(() => certificateAuthHandler(new ssh2.Client(), { username: 'x', key: generateKeyPair(), certificate: cert }), {
    message: /does not certify/,
  });
});

test('gateway: an ssh2 client authenticates with a certificate and binds its port', async (t) => {
  const env = await startGatewayEnv();
  const svc = await startDeviceService();
  let conn: Connected | undefined;
  try {
    const block = await freePortBlock(2);
    const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
    conn = await connectWithCert({ port: env.port, hostKey: env.hostKey.publicKey, key, cert, svc });
    t.true(await conn.forward(block.first));
    t.false(await conn.forward(block.last + 1), 'another port is still refused');
    t.is((await exchange(block.first, 'via ssh2')).toString(), 'via ssh2');
    const stats = env.gateway.stats();
    t.is(stats.tunnelsConnected, 1);
    // The shim signs the way OpenSSH does, so ssh2's server hands the signature on wrapped.
    t.deepEqual(stats.signatureForms, { wrapped: 1, bare: 0 });
    t.deepEqual(stats.forwardsRefused, { PORT_NOT_OWNED: 1 });
  } finally {
    conn?.end();
    await env.close();
    await svc.close();
  }
});

// OpenSSH's client never presents these two (it ignores a host certificate
// for user authentication and drops a certificate whose CA signature does
// not verify when it loads it), so the gateway's refusal is shown with the
// ssh2 client, which presents whatever it is given.
test('gateway: certificates refused to the ssh2 client (host certificate, tampered, expired)', async (t) => {
  const env = await startGatewayEnv();
  try {
    const block = await freePortBlock(2);
    const key = generateKeyPair();
    const host = signHostCert({ hostCa: env.ca, publicKey: key.publicKey, hostnames: ['dev-1'], serial: env.nextSerial(), now: new Date() });
    const good = env.deviceCert({ deviceId: 'dev-1', block, key }).cert;
    // Flip a byte in the principal (another, still well-formed, first port) and re-encode.
    const blob = Buffer.from(good.blob);
    const at = blob.indexOf(`ports-${block.first}-`) + 'ports-'.length;
    blob[at] = blob[at] === 0x31 ? 0x32 : 0x31;
    const tampered = parseCertificate(blob);
    t.not(tampered.principals[0], good.principals[0]);
    const expired = env.deviceCert({ deviceId: 'dev-1', block, key, now: new Date(Date.now() - 2 * 3600_000) }).cert;
    for (const cert of [host, tampered, expired]) {
      await t.throwsAsync(connectWithCert({ port: env.port, hostKey: env.hostKey.publicKey, key, cert }), {
        message: /All configured authentication methods failed/,
      });
    }
    t.deepEqual(env.gateway.stats().authFailures, { CERT_WRONG_TYPE: 1, CERT_BAD_SIGNATURE: 1, CERT_EXPIRED: 1 });
    t.is(env.gateway.stats().tunnelsConnected, 0);
  } finally {
    await env.close();
  }
});

test('sshd: the ssh2 client authenticates with a certificate and gets exactly its permitlisten port', async (t) => {
  await withTempDir(async (dir) => {
    const ca = generateKeyPair();
    const caPub = join(dir, 'user_ca.pub');
    await writeFile(caPub, `${formatPublicKey(ca.publicKey)}\n`);
    const block = await freePortBlock(2);
    const principals = join(dir, 'principals');
    await writeFile(
      principals,
      `restrict,port-forwarding,permitlisten="127.0.0.1:${block.first}" ports-${block.first}-${block.last}\n`,
    );
    const krl = join(dir, 'revoked.krl');
    await sshKeygenOk(['-q', '-k', '-f', krl]); // empty: a missing RevokedKeys file would refuse every key
    const sshd = await startSshd({
      config: [
        `TrustedUserCAKeys ${caPub}`,
        `AuthorizedPrincipalsFile ${principals}`,
        `RevokedKeys ${krl}`,
        'AuthorizedKeysFile none',
        'PubkeyAuthentication yes',
        'AllowTcpForwarding remote',
        'PermitTTY no',
        'X11Forwarding no',
        'AllowAgentForwarding no',
      ],
    });
    const svc = await startDeviceService();
    let conn: Connected | undefined;
    try {
      const hostKeyLine = (await sshKeygenOk(['-y', '-f', sshd.hostKeyPath])).stdout.trim();
      const hostKey = Buffer.from(hostKeyLine.split(' ')[1]!, 'base64').subarray(-32);
      const key = generateKeyPair();
      const cert = signDeviceCert({ ca, publicKey: key.publicKey, deviceId: 'dev-1', ports: block, serial: 5n, now: new Date() });
      conn = await connectWithCert({ port: sshd.port, hostKey, username: 'root', key, cert, svc });
      t.true(await conn.forward(block.first), sshd.output());
      t.is((await exchange(block.first, 'via sshd')).toString(), 'via sshd');
      t.false(await conn.forward(block.last), 'not in permitlisten');
      t.false(await isListening(block.last));
      t.regex(sshd.output(), /Accepted publickey for root .* ED25519-CERT/);
    } finally {
      conn?.end();
      await svc.close();
      await sshd.stop();
    }
  });
});

test('sshd: a certificate from another CA is refused', async (t) => {
  await withTempDir(async (dir) => {
    const caPub = join(dir, 'user_ca.pub');
    await writeFile(caPub, `${formatPublicKey(generateKeyPair().publicKey)}\n`);
    const principals = join(dir, 'principals');
    await writeFile(principals, 'ports-2000-2001\n');
    const krl = join(dir, 'revoked.krl');
    await sshKeygenOk(['-q', '-k', '-f', krl]);
    const sshd = await startSshd({
      config: [`TrustedUserCAKeys ${caPub}`, `AuthorizedPrincipalsFile ${principals}`, `RevokedKeys ${krl}`, 'AuthorizedKeysFile none'],
    });
    try {
      const hostKeyLine = (await sshKeygenOk(['-y', '-f', sshd.hostKeyPath])).stdout.trim();
      const hostKey = Buffer.from(hostKeyLine.split(' ')[1]!, 'base64').subarray(-32);
      const key = generateKeyPair();
      const cert = signDeviceCert({ ca: generateKeyPair(), publicKey: key.publicKey, deviceId: 'd', ports: { first: 2000, last: 2001 }, serial: 5n, now: new Date() });
      await t.throwsAsync(connectWithCert({ port: sshd.port, hostKey, username: 'root', key, cert }), {
        message: /All configured authentication methods failed/,
      });
    } finally {
      await sshd.stop();
    }
  });
});
