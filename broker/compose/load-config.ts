/**
 * Reads the broker's configuration once, in the entry point: the data
 * directory's config.json, overridden by environment variables and then by
 * flags (broker/core/config.ts validates, defaults and freezes it).
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { fromEnv, isPlainObject, merge, parseConfig, type BrokerConfig, type PlainObject } from '../core/config.js';
import { BrokerError } from '../core/errors.js';
import { dataPaths } from './data-dir.js';

export interface LoadConfigOptions {
  readonly dataDir: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Overrides from command-line flags, shaped like the config. */
  readonly overrides?: PlainObject;
}

export async function loadConfig(options: LoadConfigOptions): Promise<BrokerConfig> {
  const path = dataPaths(options.dataDir).config;
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new BrokerError('CONFIG_INVALID', `no ${basename(path)} in ${options.dataDir}; run certunnel init --data ${options.dataDir}`);
  }
  let file: unknown;
  try {
    file = JSON.parse(text);
  } catch {
    throw new BrokerError('CONFIG_INVALID', `${path} is not valid JSON`);
  }
  if (!isPlainObject(file)) throw new BrokerError('CONFIG_INVALID', `${path} must hold a JSON object`);
  const merged = merge(merge(file, fromEnv(options.env ?? {})), options.overrides ?? {});
  return parseConfig(merged, options.dataDir);
}

