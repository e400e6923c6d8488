/**
 * The data directories and agent state directories made by earlier
 * releases, kept as fixtures (test/fixtures/v0.2.0, v0.3.0 and v0.4.0, see
 * their READMEs; the upgrade tests run once per RELEASE_FIXTURES entry), and how
 * a test gets a usable copy of them: git keeps no file modes, so a copy
 * gets 0700 directories and 0600 secrets back, as the release made them.
 */
import { chmod, cp, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** test/fixtures/v0.2.0/, made by v0.2.0's code with its make.sh. */
export const V020_FIXTURE = fileURLToPath(new URL('../test/fixtures/v0.2.0/', import.meta.url));
/** Just after that fixture was made: its tokens (30-day default) are valid at this time. Re-making it moves this. */
export const V020_FIXTURE_TIME = Date.parse('2026-12-05T06:32:00Z');

/** test/fixtures/v0.3.0/, made by v0.3.0's code with the same make.sh. */
export const V030_FIXTURE = fileURLToPath(new URL('../test/fixtures/v0.3.0/', import.meta.url));
export const V030_FIXTURE_TIME = Date.parse('2026-12-05T08:50:00Z');

/** test/fixtures/v0.4.0/, made by v0.4.0's code with the same make.sh (the last release before trust rotations). */
export const V040_FIXTURE = fileURLToPath(new URL('../test/fixtures/v0.4.0/', import.meta.url));
export const V040_FIXTURE_TIME = Date.parse('2026-12-06T02:25:00Z');

export interface ReleaseFixture {
  /** The release tag that made it. */
  readonly release: string;
  readonly dir: string;
  /** Just after it was made (its tokens are valid then). */
  readonly time: number;
}

/** Every release fixture, oldest first: an upgrade test runs once for each. */
export const RELEASE_FIXTURES: readonly ReleaseFixture[] = [
  { release: 'v0.2.0', dir: V020_FIXTURE, time: V020_FIXTURE_TIME },
  { release: 'v0.3.0', dir: V030_FIXTURE, time: V030_FIXTURE_TIME },
  { release: 'v0.4.0', dir: V040_FIXTURE, time: V040_FIXTURE_TIME },
];

/** 0700 on DIR and every directory below it, 0600 on every file that isPublic does not name. */
export async function restoreModes(dir: string, isPublic: (file: string) => boolean): Promise<void> {
  await chmod(dir, 0o700);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await restoreModes(path, isPublic);
    else if (!isPublic(entry.name)) await chmod(path, 0o600);
  }
}

/** Copies the fixture's broker data directory to DEST with its modes back (public: keys' .pub, certificates, the pin, the KRL). */
export async function copyFixtureData(fixture: string, dest: string): Promise<void> {
  await cp(join(fixture, 'data'), dest, { recursive: true });
  await restoreModes(dest, (file) => /\.(pub|crt|pin|krl)$/.test(file));
}
