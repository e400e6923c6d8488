/**
 * What the embedded gateway presents to a new connection: the host key,
 * and the host certificate signed by the host CA (issue #14: devices and
 * the `ssh` client trust either; a rotation changes them while the broker
 * runs). Each connection is given the identity current when its SSH
 * version line arrives and keeps it for its life, rekeys included
 * (OpenSSH refuses a rekey with another host key), so a rotation touches
 * only new connections and live tunnels stay up.
 *
 * ssh2 1.17's server neither presents host certificates nor changes host
 * keys after construction, so this sets two fields of the connection's
 * Protocol in ssh2's 'connection' event, which ssh2 emits before it sends
 * its KEXINIT: `_offer` (server_host_key_algorithms, with
 * ssh-ed25519-cert-v01@openssh.com first when there is a certificate) and
 * `_hostKeys` (by algorithm name). For the certificate the key exchange's
 * K_S is the certificate blob and the signature is the plain key's
 * (PROTOCOL.certkeys: "the signature is made with the certified key", its
 * type "ssh-ed25519"); ssh2 names the signature after the negotiated
 * algorithm, so the certificate's key object renames it before ssh2 reads
 * it. ssh2's internals are touched: the version is checked as
 * ssh2-padding.ts does.
 */
import { createRequire } from 'node:module';
import ssh2 from 'ssh2';
import type { Connection } from 'ssh2';
import { encodePrivateKey, parseCertificateLine, publicKeyBlob, type KeyPair } from '../../ca/index.js';
import { checkSsh2Version } from './ssh2-padding.js';

const require = createRequire(import.meta.url);

export const HOST_CERT_ALGORITHM = 'ssh-ed25519-cert-v01@openssh.com';
const HOST_KEY_ALGORITHM = 'ssh-ed25519';

export interface HostIdentity {
  readonly hostKey: KeyPair;
  /** An OpenSSH host certificate line for hostKey; absent: the key alone. */
  readonly hostCertificate?: string;
}

/** ssh2's parsed key object, as its key exchange uses it. */
interface Ssh2Key {
  readonly type: string;
  getPublicSSH(): Buffer;
  sign(data: Buffer, algo?: string): Buffer | Error;
}

interface KexInitList {
  readonly array: string[];
}
interface KexInitLists {
  readonly kex: KexInitList;
  readonly serverHostKey: KexInitList;
  readonly cs: Record<'cipher' | 'mac' | 'compress' | 'lang', KexInitList>;
  readonly sc: Record<'cipher' | 'mac' | 'compress' | 'lang', KexInitList>;
}
interface KexInit {
  readonly lists: KexInitLists;
}
type KexInitClass = new (algorithms: unknown) => KexInit;

/** The Protocol fields this file sets, and the key exchange it reads. */
interface Ssh2Protocol {
  _offer: KexInit;
  _hostKeys: Record<string, Ssh2Key>;
  _kex?: { negotiated?: { serverHostKey?: string } };
}

/** An identity parsed once, for every connection it is given to. */
export interface PreparedHostIdentity {
  readonly identity: HostIdentity;
  readonly key: Ssh2Key;
  readonly certificateBlob: Buffer | undefined;
  /** Offers built from a base offer (the ssh2 Server's), by that offer. */
  readonly offers: WeakMap<KexInit, KexInit>;
}

let kexInitClass: KexInitClass | undefined;

function loadKexInit(): KexInitClass {
  if (!kexInitClass) {
    checkSsh2Version((require('ssh2/package.json') as { version: string }).version);
    kexInitClass = (require('ssh2/lib/protocol/kex.js') as { KexInit: KexInitClass }).KexInit;
  }
  return kexInitClass;
}

/** Parses IDENTITY; a certificate must be a host certificate of hostKey (else the broker would present a lie). */
export function prepareHostIdentity(identity: HostIdentity): PreparedHostIdentity {
  loadKexInit();
  const parsed = ssh2.utils.parseKey(encodePrivateKey(identity.hostKey));
  const key = (Array.isArray(parsed) ? parsed[0] : parsed) as Ssh2Key | Error;
  if (key instanceof Error || key.type !== HOST_KEY_ALGORITHM) throw new Error('the host key must be an Ed25519 private key');
  let certificateBlob: Buffer | undefined;
  if (identity.hostCertificate) {
    const cert = parseCertificateLine(identity.hostCertificate);
    if (cert.type !== 'host' || !publicKeyBlob(cert.publicKey).equals(key.getPublicSSH())) {
      throw new Error('the host certificate does not certify the host key');
    }
    certificateBlob = cert.blob;
  }
  return { identity, key, certificateBlob, offers: new WeakMap() };
}

/** BASE with server_host_key_algorithms replaced by ALGORITHMS. */
function offerWith(base: KexInit, algorithms: string[]): KexInit {
  const KexInitCtor = loadKexInit();
  const { lists } = base;
  const side = (s: KexInitLists['cs']) => ({ cipher: s.cipher.array, mac: s.mac.array, compress: s.compress.array, lang: s.lang.array });
  return new KexInitCtor({ kex: lists.kex.array, serverHostKey: algorithms, cs: side(lists.cs), sc: side(lists.sc) });
}

/**
 * Gives CONN (in ssh2's 'connection' event, before its KEXINIT) the host
 * key and certificate of PREPARED.
 */
export function presentHostIdentity(conn: Connection, prepared: PreparedHostIdentity): void {
  const protocol = (conn as unknown as { _protocol: Ssh2Protocol })._protocol;
  const base = protocol._offer;
  const { key, certificateBlob } = prepared;
  const hostKeys: Record<string, Ssh2Key> = { [HOST_KEY_ALGORITHM]: key };
  let offer = prepared.offers.get(base);
  if (!offer) {
    offer = offerWith(base, certificateBlob ? [HOST_CERT_ALGORITHM, HOST_KEY_ALGORITHM] : [HOST_KEY_ALGORITHM]);
    prepared.offers.set(base, offer);
  }
  if (certificateBlob) {
    hostKeys[HOST_CERT_ALGORITHM] = {
      type: key.type,
      // Read first when ssh2 builds KEXDH_REPLY; the signature's name is read last.
      getPublicSSH: () => {
        const negotiated = protocol._kex?.negotiated;
        if (negotiated?.serverHostKey === HOST_CERT_ALGORITHM) negotiated.serverHostKey = HOST_KEY_ALGORITHM;
        return certificateBlob;
      },
      sign: (data, algo) => key.sign(data, algo),
    };
  }
  protocol._offer = offer;
  protocol._hostKeys = hostKeys;
}
