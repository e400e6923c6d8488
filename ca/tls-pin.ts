/**
 * Pins for the broker's HTTPS API: SHA-256 of the certificate's
 * SubjectPublicKeyInfo, written "sha256//BASE64" as curl's --pinnedpubkey
 * takes it. Shared by the broker (which prints it) and devices (which check it).
 */
import { createHash } from 'node:crypto';

export function tlsPinOfSpki(spkiDer: Buffer): string {
  return `sha256//${createHash('sha256').update(spkiDer).digest('base64')}`;
}

export function isTlsPin(text: string): boolean {
  return /^sha256\/\/[A-Za-z0-9+/]{43}=$/.test(text);
}
