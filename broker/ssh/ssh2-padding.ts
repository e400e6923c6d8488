/**
 * Packet padding from a pool of random bytes, for ssh2 1.17's AEAD ciphers.
 *
 * ssh2 fills every outgoing packet's padding (4 to 19 bytes) with its own
 * randomFillSync() call. On this machine that call costs about 1.6 µs
 * whatever the size (node builds a crypto job object for it), and it was
 * a tenth of the broker's CPU when relaying small HTTP requests through
 * tunnels (V8 profile of `npm run bench:proxy`). Here the padding is copied
 * from a 4 KiB block of randomFillSync() output instead, each byte used
 * once: still CSPRNG bytes (RFC 4253 section 6 asks for random padding;
 * with chacha20-poly1305 and AES-GCM it is covered by the AEAD tag and
 * carries no secret), one system-library call per few hundred packets.
 *
 * The four classes patched (chacha20-poly1305 and AES-GCM, with and without
 * ssh2's native binding) are reached through ssh2's own createCipher(),
 * and allocPacket() is rewritten with their framing (block size, and the
 * tag ssh2 appends in place); a test compares every length against the
 * originals. Other ciphers keep ssh2's code. ssh2's internals are touched,
 * so this refuses any ssh2 version but the one it was written against.
 */
import { createRequire } from 'node:module';
import { randomFillSync } from 'node:crypto';

const require = createRequire(import.meta.url);

export const SUPPORTED_SSH2_VERSION = '1.17.0';

interface CipherInstance {
  allocPacket(payloadLen: number): Buffer;
  free(): void;
}

interface Ssh2Crypto {
  CIPHER_INFO: Record<string, { keyLen: number; ivLen: number }>;
  createCipher(config: { outbound: Record<string, unknown> }): CipherInstance;
}

/** Block size and the bytes allocated after the packet (the tag), by class: ssh2 1.17's framing. */
const FRAMING: Readonly<Record<string, { blockLen: number; tagLen: number }>> = {
  ChaChaPolyCipherBinding: { blockLen: 8, tagLen: 16 },
  ChaChaPolyCipherNative: { blockLen: 8, tagLen: 0 },
  AESGCMCipherBinding: { blockLen: 16, tagLen: 16 },
  AESGCMCipherNative: { blockLen: 16, tagLen: 0 },
};

const POOL_BYTES = 4096;
let pool = Buffer.alloc(0);
let poolOffset = 0;

/** LENGTH fresh random bytes into PACKET at AT. */
function fillRandom(packet: Buffer, at: number, length: number): void {
  if (poolOffset + length > pool.length) {
    pool = randomFillSync(Buffer.allocUnsafe(POOL_BYTES));
    poolOffset = 0;
  }
  pool.copy(packet, at, poolOffset, poolOffset + length);
  poolOffset += length;
}

/** allocPacket() as ssh2 1.17 writes it for an AEAD cipher (the length field is not encrypted, so not padded over). */
export function pooledAllocPacket(blockLen: number, tagLen: number): (payloadLen: number) => Buffer {
  return (payloadLen) => {
    let pktLen = 4 + 1 + payloadLen;
    let padLen = blockLen - ((pktLen - 4) & (blockLen - 1));
    if (padLen < 4) padLen += blockLen;
    pktLen += padLen;
    const packet = Buffer.allocUnsafe(pktLen + tagLen);
    packet.writeUInt32BE(pktLen - 4, 0);
    packet[4] = padLen;
    fillRandom(packet, 5 + payloadLen, padLen);
    return packet;
  };
}

export function checkSsh2Version(version: string): void {
  if (version !== SUPPORTED_SSH2_VERSION) {
    throw new Error(
      `broker/ssh/ssh2-padding.ts patches ssh2 ${SUPPORTED_SSH2_VERSION} internals but ssh2 ${version} is installed; ` +
        'review it against the new release before changing the pin',
    );
  }
}

function ssh2Crypto(): Ssh2Crypto {
  checkSsh2Version((require('ssh2/package.json') as { version: string }).version);
  return require('ssh2/lib/protocol/crypto.js') as Ssh2Crypto;
}

/** An instance of each AEAD cipher class ssh2 would use, with throwaway keys (the caller frees them). */
export function aeadCipherInstances(): CipherInstance[] {
  const crypto = ssh2Crypto();
  const out: CipherInstance[] = [];
  for (const name of ['chacha20-poly1305@openssh.com', 'aes128-gcm@openssh.com']) {
    const cipherInfo = crypto.CIPHER_INFO[name]!;
    for (const forceNative of [false, true]) {
      out.push(crypto.createCipher({
        outbound: {
          onWrite: () => undefined, cipherInfo, cipherKey: Buffer.alloc(cipherInfo.keyLen), cipherIV: Buffer.alloc(cipherInfo.ivLen), seqno: 0, forceNative,
        },
      }));
    }
  }
  return out;
}

/** The classes patched, once installed. */
let installed: readonly string[] | undefined;

/** Patches the AEAD cipher classes once per process (every gateway calls this); returns the names of the classes patched. */
export function installPaddingPool(): string[] {
  if (installed) return [...installed];
  const patched = new Set<string>();
  for (const instance of aeadCipherInstances()) {
    const proto = Object.getPrototypeOf(instance) as { constructor: { name: string }; allocPacket: unknown };
    const framing = FRAMING[proto.constructor.name];
    if (framing && !patched.has(proto.constructor.name)) {
      proto.allocPacket = pooledAllocPacket(framing.blockLen, framing.tagLen);
      patched.add(proto.constructor.name);
    }
    instance.free();
  }
  installed = [...patched];
  return [...installed];
}
