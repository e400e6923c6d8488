/**
 * Human-readable certificate description in the layout of `ssh-keygen -L`,
 * so that operators can compare the two side by side.
 */
import { FOREVER, ED25519_CERT, type Certificate } from './cert.js';
import { fingerprint } from './keys.js';

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

/** ssh-keygen prints local time as YYYY-MM-DDTHH:MM:SS. */
function formatTime(seconds: bigint): string {
  const d = new Date(Number(seconds) * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function formatValidity(cert: Certificate): string {
  if (cert.validAfter === 0n && cert.validBefore === FOREVER) return 'forever';
  if (cert.validBefore === FOREVER) return `from ${formatTime(cert.validAfter)} to forever`;
  if (cert.validAfter === 0n) return `before ${formatTime(cert.validBefore)}`;
  return `from ${formatTime(cert.validAfter)} to ${formatTime(cert.validBefore)}`;
}

function formatOptions(options: Readonly<Record<string, string>>): string[] {
  const names = Object.keys(options).sort();
  if (names.length === 0) return ['(none)'];
  return names.map((name) => (options[name] === '' ? name : `${name} ${options[name]}`));
}

export function describeCertificate(cert: Certificate, label = '(certificate)'): string {
  const indent = '        ';
  const lines = [
    `${label}:`,
    `${indent}Type: ${ED25519_CERT} ${cert.type} certificate`,
    `${indent}Public key: ED25519-CERT ${fingerprint(cert.publicKey)}`,
    `${indent}Signing CA: ED25519 ${fingerprint(cert.signatureKey)} (using ssh-ed25519)`,
    `${indent}Key ID: "${cert.keyId}"`,
    `${indent}Serial: ${cert.serial}`,
    `${indent}Valid: ${formatValidity(cert)}`,
  ];
  const list = (title: string, items: string[]): void => {
    if (items.length === 1 && items[0] === '(none)') {
      lines.push(`${indent}${title}: (none)`);
    } else {
      lines.push(`${indent}${title}: `, ...items.map((item) => `${indent}${indent}${item}`));
    }
  };
  list('Principals', cert.principals.length ? [...cert.principals] : ['(none)']);
  list('Critical Options', formatOptions(cert.criticalOptions));
  list('Extensions', formatOptions(cert.extensions));
  return lines.join('\n');
}
