/**
 * The pooled padding of broker/ssh/ssh2-padding.ts: same framing as ssh2's
 * own allocPacket() for every payload length, fresh random padding, and
 * real OpenSSH clients through the gateway with each AEAD cipher.
 */
import test from 'ava';
import { connect } from 'node:net';
import { aeadCipherInstances, checkSsh2Version, installPaddingPool } from '../../../broker/ssh/ssh2-padding.js';
import { freePortBlock, startDeviceService, startGatewayEnv } from '../../../testkit/gateway.js';
import { spawnSsh, waitFor } from '../../../testkit/ssh-client.js';

const LENGTHS = Array.from({ length: 600 }, (_, i) => i);

/** Length, the length field and the padding length byte, per payload length: what a peer parses. */
function framing(allocPacket: (n: number) => Buffer): string[] {
  return LENGTHS.map((n) => {
    const p = allocPacket(n);
    return `${p.length}:${p.readUInt32BE(0)}:${p[4]}`;
  });
}

test.serial('the pooled allocPacket frames every payload length exactly as ssh2 does, with fresh random padding', (t) => {
  // ssh2's own, before the patch: ava runs each test file in its own process.
  const before = aeadCipherInstances().map((c) => {
    const proto = Object.getPrototypeOf(c) as { constructor: { name: string }; allocPacket: unknown };
    const frames = framing((n) => c.allocPacket(n));
    c.free();
    return { name: proto.constructor.name, frames, original: proto.allocPacket };
  });
  const patched = installPaddingPool();
  t.deepEqual(patched.sort(), ['AESGCMCipherBinding', 'AESGCMCipherNative', 'ChaChaPolyCipherBinding', 'ChaChaPolyCipherNative'].filter((n) => before.some((b) => b.name === n)).sort());
  const after = aeadCipherInstances();
  for (const [i, c] of after.entries()) {
    t.deepEqual(framing((n) => c.allocPacket(n)), before[i]!.frames, before[i]!.name);
    t.not(c.allocPacket, before[i]!.original, `${before[i]!.name} is patched`);
  }
  // Padding bytes: 10,000 packets' worth, no two paddings alike, not all zero.
  const seen = new Set<string>();
  const c = after[0]!;
  for (let i = 0; i < 10_000; i++) {
    const p = c.allocPacket(11);
    seen.add(p.subarray(16, 16 + p[4]!).toString('hex'));
  }
  t.is(seen.size, 10_000);
  for (const x of after) x.free();
  // Idempotent.
  t.deepEqual(installPaddingPool().sort(), patched.sort());
});

test('refuses any other ssh2 version', (t) => {
  t.notThrows(() => checkSsh2Version('1.17.0'));
  const err = t.throws(() => checkSsh2Version('1.18.0'));
  t.regex(err!.message, /ssh2 1\.17\.0 internals but ssh2 1\.18\.0/);
});

for (const cipher of ['chacha20-poly1305@openssh.com', 'aes128-gcm@openssh.com', 'aes256-gcm@openssh.com']) {
  test(`OpenSSH tunnels through the gateway with ${cipher}`, async (t) => {
    const env = await startGatewayEnv();
    t.teardown(() => env.close());
    const service = await startDeviceService('hello');
    t.teardown(() => service.close());
    const block = await freePortBlock(1);
    const { key, cert } = env.deviceCert({ deviceId: 'dev-1', block });
    const ssh = spawnSsh([...env.args(await env.identity('dev-1', key, cert)), '-c', cipher, '-N', '-R', `127.0.0.1:${block.first}:127.0.0.1:${service.port}`]);
    t.teardown(() => ssh.stop());
    await waitFor(() => env.gateway.tunnelPorts('dev-1').includes(block.first), 'the tunnel');
    // Many small packets each way: each one padded from the pool.
    const socket = connect({ host: '127.0.0.1', port: block.first });
    let text = '';
    socket.on('data', (c: Buffer) => (text += c.toString()));
    await waitFor(() => text.startsWith('hello'), 'the greeting');
    for (let i = 0; i < 200; i++) socket.write(`ping-${i}\n`);
    await waitFor(() => (text.match(/ping-/g) ?? []).length === 200, 'the echoes');
    t.true(text.includes('ping-199'));
    socket.destroy();
  });
}
