/**
 * systemd unit files under test: their directives as a map, and systemd's
 * own verdict on them (`systemd-analyze verify`, with any drop-ins beside
 * them in <unit>.d/) where the machine has systemd-analyze.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand, withTempDir } from './openssh.js';

/** Every KEY=VALUE line of TEXT (sections ignored), values in order of appearance. */
export function unitDirectives(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) map.set(m[1]!, [...(map.get(m[1]!) ?? []), m[2]!]);
  }
  return map;
}

export async function hasSystemdAnalyze(): Promise<boolean> {
  const probe = await runCommand('systemd-analyze', ['--version']).catch(() => null);
  return probe !== null && probe.code === 0;
}

/**
 * `systemd-analyze verify` on UNIT (its file name and text) with DROPINS
 * (file name → text, written to <unit>.d/). verify insists that ExecStart's
 * program exists: /bin/true stands in for the installed CLI.
 */
export async function verifyUnit(unit: { name: string; text: string }, dropIns: Record<string, string> = {}): Promise<{ code: number; stderr: string }> {
  return withTempDir(async (dir) => {
    const path = join(dir, unit.name);
    await writeFile(path, unit.text.replace(/^ExecStart=\S+/m, 'ExecStart=/bin/true'));
    if (Object.keys(dropIns).length > 0) {
      await mkdir(`${path}.d`);
      for (const [name, text] of Object.entries(dropIns)) await writeFile(join(`${path}.d`, name), text);
    }
    const result = await runCommand('systemd-analyze', ['verify', path]);
    return { code: result.code ?? -1, stderr: result.stderr };
  });
}
