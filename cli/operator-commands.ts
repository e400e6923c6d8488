/** `certunnel token|device|audit …`: operator and provisioner commands over the HTTPS API (wire types: api/operator.ts). */
import type { Command } from 'commander';
import type { DeviceView, ListAuditRequest, ListAuditResponse, ListDevicesRequest, ListDevicesResponse, ListTokensRequest, ListTokensResponse, MintTokensRequest, MintTokensResponse, RevokeDeviceRequest, RevokeDeviceResponse, RevokeTokensRequest, RevokeTokensResponse } from '../api/index.js';
import { addApiOptions, callApi, type ApiFlags } from './api-connection.js';
import { callDeviceApi } from './device-ref.js';
import { CliError, printJson, printTable } from './output.js';

/** The query string of a list request, its values as given on the command line (the broker validates them). */
function query<Q extends object>(params: { [K in keyof Q]?: string }): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params) as Array<[string, string | undefined]>) if (v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function show<T extends object>(flags: ApiFlags, value: unknown, rows: readonly T[], columns: ReadonlyArray<keyof T & string>): void {
  if (flags.json) printJson(value);
  else printTable(rows, columns);
}

function moreHint(flags: ApiFlags, nextCursor: string | null): void {
  if (!flags.json && nextCursor) process.stdout.write(`(more: --cursor ${nextCursor})\n`);
}

/** A device row for people: its block as FIRST-LAST, its presence in words. */
function deviceRow(d: DeviceView): Omit<DeviceView, 'ports' | 'online'> & { ports: string | null; online: string } {
  return {
    ...d,
    ports: d.ports ? `${d.ports.first}-${d.ports.last}` : null,
    online: d.online ? `online since ${d.connectedSince}` : `offline${d.lastSeenAt ? ` (seen ${d.lastSeenAt})` : ''}`,
  };
}

/** An actor for people: `apikey:key_… (alice)` when the broker knows the key's name. */
function withName(actor: string, name: string | undefined): string {
  return name === undefined ? actor : `${actor} (${name})`;
}

type ListFlags = ApiFlags & { limit?: string; cursor?: string };

const LIMIT_HELP = 'at most this many rows per page';
const CURSOR_HELP = 'the next page, from the previous page\'s "(more: --cursor …)"';

function registerTokenCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const token = program.command('token').description('enrollment tokens (admin or provisioner key)');
  addApiOptions(token.command('create').description('mint one or more single-use enrollment tokens'))
    .option('--count <n>', 'how many tokens', '1')
    .option('--batch <name>', 'batch name (revocable as a whole)')
    .option('--ttl <seconds>', 'lifetime in seconds (default: the broker default, 30 days)')
    .option('--bind-name <name>', 'bind a single token to this device name')
    .option('--bind-serial <serial>', 'bind a single token to this hardware serial')
    .action(async (flags: ApiFlags & { count: string; batch?: string; ttl?: string; bindName?: string; bindSerial?: string }) => {
      const count = Number(flags.count);
      if (!Number.isInteger(count) || count < 1) throw new CliError('BAD_ARGUMENT', '--count must be a positive integer');
      if ((flags.bindName || flags.bindSerial) && count !== 1) throw new CliError('BAD_ARGUMENT', '--bind-* needs --count 1');
      const body: MintTokensRequest = {
        count, batch: flags.batch, ttlSeconds: flags.ttl ? Number(flags.ttl) : undefined,
        bindNames: flags.bindName ? [flags.bindName] : undefined, bindSerials: flags.bindSerial ? [flags.bindSerial] : undefined,
      };
      const res = await callApi<MintTokensResponse>(flags, env, 'POST', '/v1/tokens', body);
      show(flags, res, res.tokens, ['id', 'token', 'batch', 'bindName', 'expiresAt']);
    });
  addApiOptions(token.command('list').description('list tokens (secrets are never shown again)'))
    .option('--batch <name>', 'only the tokens of this batch').option('--status <status>', 'active, used, expired, revoked').option('--limit <n>', LIMIT_HELP).option('--cursor <c>', CURSOR_HELP)
    .action(async (flags: ListFlags & { batch?: string; status?: string }) => {
      const q = query<ListTokensRequest>({ batch: flags.batch, status: flags.status, limit: flags.limit, cursor: flags.cursor });
      const res = await callApi<ListTokensResponse>(flags, env, 'GET', `/v1/tokens${q}`);
      show(flags, res, res.items, ['id', 'batch', 'status', 'bindName', 'expiresAt', 'usedByDevice']);
      moreHint(flags, res.nextCursor);
    });
  addApiOptions(token.command('revoke').description('revoke one unused token, or every unused token of a batch'))
    .option('--id <id>', 'the token id (tok_…) to revoke').option('--batch <name>', 'revoke every unused token of this batch')
    .action(async (flags: ApiFlags & { id?: string; batch?: string }) => {
      if (!flags.id === !flags.batch) throw new CliError('BAD_ARGUMENT', 'give exactly one of --id or --batch');
      const body: RevokeTokensRequest = flags.id ? { id: flags.id } : { batch: flags.batch! };
      const res = await callApi<RevokeTokensResponse>(flags, env, 'POST', '/v1/tokens/revoke', body);
      if (flags.json) printJson(res);
      else process.stdout.write(`revoked ${res.revoked} token(s)\n`);
    });
}

function registerDeviceCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const device = program.command('device').description('devices (admin or operator key)');
  addApiOptions(device.command('list').description('list devices'))
    .option('--status <status>', 'active or revoked').option('--name <text>', 'name contains').option('--label <k=v>', 'only devices with this label').option('--limit <n>', LIMIT_HELP).option('--cursor <c>', CURSOR_HELP)
    .action(async (flags: ListFlags & { status?: string; name?: string; label?: string }) => {
      const q = query<ListDevicesRequest>({ status: flags.status, name: flags.name, label: flags.label, limit: flags.limit, cursor: flags.cursor });
      const res = await callApi<ListDevicesResponse>(flags, env, 'GET', `/v1/devices${q}`);
      show(flags, res, res.items.map(deviceRow), ['id', 'name', 'status', 'ports', 'online', 'remoteAddr']);
      moreHint(flags, res.nextCursor);
    });
  addApiOptions(device.command('show').description('show one device').argument('<device>', 'device id or name'))
    .action(async (ref: string, flags: ApiFlags) => {
      const res = await callDeviceApi<DeviceView>(flags, env, 'GET', ref);
      const { revokedByName, ...shown } = res;
      if (flags.json) printJson(res);
      else for (const [k, v] of Object.entries({ ...shown, revokedBy: shown.revokedBy && withName(shown.revokedBy, revokedByName) })) process.stdout.write(`${k.padEnd(16)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v ?? '-')}\n`);
    });
  addApiOptions(device.command('revoke').description('revoke a device: its certificates, its tunnel, its renewals').argument('<device>', 'device id or name'))
    .option('--reason <text>', 'why, recorded in the audit trail')
    .action(async (ref: string, flags: ApiFlags & { reason?: string }) => {
      const body: RevokeDeviceRequest = { reason: flags.reason };
      const res = await callDeviceApi<RevokeDeviceResponse>(flags, env, 'POST', ref, '/revoke', body);
      if (flags.json) printJson(res);
      else process.stdout.write(res.alreadyRevoked ? `${res.device.id} was already revoked\n` : `revoked ${res.device.id}${res.device.name ? ` (${res.device.name})` : ''}: ${res.certificatesRevoked} certificate(s) revoked, KRL updated, live tunnel (if any) closed\n`);
    });
}

export function registerOperatorCommands(program: Command, env: NodeJS.ProcessEnv): void {
  registerTokenCommands(program, env);
  registerDeviceCommands(program, env);
  addApiOptions(program.command('audit').description('the audit trail (admin or operator key)'))
    .option('--since <iso-time>', 'only events at or after this time, e.g. 2026-01-31T00:00:00Z').option('--action <action>', 'only this action, e.g. device.revoke').option('--actor <actor>', 'only this actor, e.g. apikey:key_… or device:dev_…').option('--limit <n>', LIMIT_HELP).option('--cursor <c>', CURSOR_HELP)
    .action(async (flags: ListFlags & { since?: string; action?: string; actor?: string }) => {
      const q = query<ListAuditRequest>({ since: flags.since, action: flags.action, actor: flags.actor, limit: flags.limit, cursor: flags.cursor });
      const res = await callApi<ListAuditResponse>(flags, env, 'GET', `/v1/audit${q}`);
      show(flags, res, res.items.map((e) => ({ ...e, actor: withName(e.actor, e.actorName) })), ['at', 'actor', 'action', 'target', 'outcome', 'remoteAddr']);
      moreHint(flags, res.nextCursor);
    });
}
