/**
 * `certunnel apikey create|list|revoke`: API keys (wire types: api/operator.ts).
 * list and revoke go over the HTTPS API with an admin key, or with --local
 * straight to the data directory on the broker's host (when the admin key is
 * lost); create is local, as the first admin key has to be.
 */
import type { Command } from 'commander';
import { API_KEY_NAME, API_KEY_ROLES as ROLES, type ApiKeyRole, type ApiKeyView, type ListApiKeysResponse, type RevokeApiKeyRequest, type RevokeApiKeyResponse } from '../api/index.js';
import { createLocalApiKey, listLocalApiKeys, revokeLocalApiKey } from '../broker/compose/index.js';
import { addApiOptions, callApi, type ApiFlags } from './api-connection.js';
import { parseDuration } from './ca-commands.js';
import { CliError, printJson, printTable } from './output.js';

type LocalFlags = ApiFlags & { local?: boolean };

const COLUMNS: ReadonlyArray<keyof ApiKeyView> = ['id', 'name', 'role', 'status', 'expiresAt', 'lastUsedAt', 'createdBy'];

/** --local needs the data directory: it opens the store instead of calling the API. */
function localDir(flags: LocalFlags): string | undefined {
  if (!flags.local) return undefined;
  if (!flags.data) throw new CliError('BAD_ARGUMENT', '--local needs --data <dir>');
  return flags.data;
}

function addLocalOption(cmd: Command): Command {
  return addApiOptions(cmd).option('--local', 'act on the store in --data directly (on the broker host, no API key needed)');
}

function registerCreate(apikey: Command): void {
  apikey.command('create')
    .description('make an API key in the data directory (shown once, stored hashed)')
    .requiredOption('--data <dir>', 'broker data directory')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')} (proxy: opens device web pages only, cannot call the API)`)
    .requiredOption('--name <name>', 'who or what holds the key')
    .option('--expires-in <duration>', 'the key stops working after this long, e.g. 12h, 30d (default: never)')
    .option('--json', 'print {"id","name","role","key","expiresAt"} on stdout instead of the bare key (errors: {"error":{"code","message"}} on stderr)')
    .action(async (flags: { data: string; role: string; name: string; expiresIn?: string; json?: boolean }) => {
      if (!ROLES.includes(flags.role as ApiKeyRole)) throw new CliError('BAD_ARGUMENT', `--role must be one of ${ROLES.join(', ')}`);
      if (!API_KEY_NAME.test(flags.name)) throw new CliError('BAD_ARGUMENT', '--name: letters, digits, . _ @ -');
      const seconds = flags.expiresIn === undefined ? undefined : parseDuration(flags.expiresIn);
      if (seconds === 0) throw new CliError('BAD_ARGUMENT', '--expires-in must be longer than 0 s');
      const expiresAt = seconds === undefined ? null : new Date(Date.now() + seconds * 1000);
      const key = await createLocalApiKey(flags.data, { role: flags.role as ApiKeyRole, name: flags.name, expiresAt });
      if (flags.json) {
        printJson({ id: key.id, name: key.name, role: key.role, key: key.key, expiresAt: key.expiresAt });
        return;
      }
      process.stdout.write(`${key.key}\n`);
      const until = key.expiresAt ? `, expires ${key.expiresAt}` : '';
      process.stderr.write(`created ${key.role} key ${key.id} (${key.name}${until}); the key is shown once\n`);
    });
}

function registerList(apikey: Command, env: NodeJS.ProcessEnv): void {
  addLocalOption(apikey.command('list').description('list API keys: role, status (active, expired, revoked), expiry, last use; never secrets'))
    .action(async (flags: LocalFlags) => {
      const dir = localDir(flags);
      const items = dir ? await listLocalApiKeys(dir) : (await callApi<ListApiKeysResponse>(flags, env, 'GET', '/v1/apikeys')).items;
      if (flags.json) printJson({ items } satisfies ListApiKeysResponse);
      else printTable(items, COLUMNS);
    });
}

function registerRevoke(apikey: Command, env: NodeJS.ProcessEnv): void {
  addLocalOption(apikey.command('revoke').description('revoke an API key: it fails from its next request on, and its proxy sessions end'))
    .argument('<id>', 'the key id (key_…), as `apikey list` shows it')
    .option('--force', 'revoke even the last active admin key')
    .action(async (id: string, flags: LocalFlags & { force?: boolean }) => {
      const dir = localDir(flags);
      const body: RevokeApiKeyRequest = flags.force ? { force: true } : {};
      const res = dir
        ? await revokeLocalApiKey(dir, id, body)
        : await callApi<RevokeApiKeyResponse>(flags, env, 'POST', `/v1/apikeys/${encodeURIComponent(id)}/revoke`, body);
      if (flags.json) printJson(res);
      else process.stdout.write(res.alreadyRevoked ? `${id} was already revoked\n` : `revoked ${res.key.role} key ${id} (${res.key.name})\n`);
    });
}

export function registerApiKeyCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const apikey = program.command('apikey').description('API keys: create (on the broker host), list, revoke (admin key, or --local on the broker host)');
  registerCreate(apikey);
  registerList(apikey, env);
  registerRevoke(apikey, env);
}
