/**
 * The CA passphrase travels apart from the configuration: from a file named
 * on the command line or from CERTUNNEL_CA_PASSPHRASE, read once in the entry
 * point. It is never accepted as a command-line value (it would show in ps).
 */
import { readFile } from 'node:fs/promises';

export async function readPassphrase(file: string | undefined, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (file) return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  const fromEnv = env.CERTUNNEL_CA_PASSPHRASE;
  return fromEnv ? fromEnv : undefined;
}
