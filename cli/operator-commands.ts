/** `certunnel token|device|audit …`: operator and provisioner commands over the HTTPS API. */
import type { Command } from 'commander';
import { addApiOptions, callApi, type ApiFlags } from './api-connection.js';
import { CliError, printJson, printTable } from './output.js';

type Page<T> = { items: T[]; nextCursor: string | null };

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

function show<T extends Record<string, unknown>>(flags: ApiFlags, value: unknown, rows: T[], columns: string[]): void {
  if (flags.json) printJson(value);
  else printTable(rows, columns);
}

export function registerOperatorCommands(program: Command, env: NodeJS.ProcessEnv): void {
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
      const res = await callApi<{ batch: string | null; tokens: Array<Record<string, unknown>> }>(flags, env, 'POST', '/v1/tokens', {
        count, batch: flags.batch, ttlSeconds: flags.ttl ? Number(flags.ttl) : undefined,
        bindNames: flags.bindName ? [flags.bindName] : undefined, bindSerials: flags.bindSerial ? [flags.bindSerial] : undefined,
      });
      show(flags, res, res.tokens, ['id', 'token', 'batch', 'bindName', 'expiresAt']);
    });
  addApiOptions(token.command('list').description('list tokens (secrets are never shown again)'))
    .option('--batch <name>').option('--status <status>', 'active, used, expired, revoked').option('--limit <n>').option('--cursor <c>')
    .action(async (flags: ApiFlags & { batch?: string; status?: string; limit?: string; cursor?: string }) => {
      const res = await callApi<Page<Record<string, unknown>>>(flags, env, 'GET', `/v1/tokens${query({ batch: flags.batch, status: flags.status, limit: flags.limit, cursor: flags.cursor })}`);
      show(flags, res, res.items, ['id', 'batch', 'status', 'bindName', 'expiresAt', 'usedByDevice']);
      if (!flags.json && res.nextCursor) process.stdout.write(`(more: --cursor ${res.nextCursor})\n`);
    });
  addApiOptions(token.command('revoke').description('revoke one unused token, or every unused token of a batch'))
    .option('--id <id>').option('--batch <name>')
    .action(async (flags: ApiFlags & { id?: string; batch?: string }) => {
      if (!flags.id === !flags.batch) throw new CliError('BAD_ARGUMENT', 'give exactly one of --id or --batch');
      const res = await callApi<{ revoked: number }>(flags, env, 'POST', '/v1/tokens/revoke', flags.id ? { id: flags.id } : { batch: flags.batch });
      if (flags.json) printJson(res);
      else process.stdout.write(`revoked ${res.revoked} token(s)\n`);
    });

  const device = program.command('device').description('devices (admin or operator key)');
  addApiOptions(device.command('list').description('list devices'))
    .option('--status <status>', 'active or revoked').option('--name <text>', 'name contains').option('--label <k=v>').option('--limit <n>').option('--cursor <c>')
    .action(async (flags: ApiFlags & { status?: string; name?: string; label?: string; limit?: string; cursor?: string }) => {
      const res = await callApi<Page<Record<string, unknown>>>(flags, env, 'GET', `/v1/devices${query({ status: flags.status, name: flags.name, label: flags.label, limit: flags.limit, cursor: flags.cursor })}`);
      const rows = res.items.map((d) => ({ ...d, ports: d.ports ? `${(d.ports as { first: number }).first}-${(d.ports as { last: number }).last}` : null, online: d.online ? `online since ${d.connectedSince}` : `offline${d.lastSeenAt ? ` (seen ${d.lastSeenAt})` : ''}` }));
      show(flags, res, rows, ['id', 'name', 'status', 'ports', 'online', 'remoteAddr']);
      if (!flags.json && res.nextCursor) process.stdout.write(`(more: --cursor ${res.nextCursor})\n`);
    });
  addApiOptions(device.command('show').description('show one device').argument('<device>', 'device id or name'))
    .action(async (ref: string, flags: ApiFlags) => {
      const res = await callApi<Record<string, unknown>>(flags, env, 'GET', `/v1/devices/${encodeURIComponent(ref)}`);
      if (flags.json) printJson(res);
      else for (const [k, v] of Object.entries(res)) process.stdout.write(`${k.padEnd(16)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v ?? '-')}\n`);
    });
  addApiOptions(device.command('revoke').description('revoke a device: its certificates, its tunnel, its renewals').argument('<device>', 'device id or name'))
    .option('--reason <text>')
    .action(async (ref: string, flags: ApiFlags & { reason?: string }) => {
      const res = await callApi<{ device: { id: string; name: string | null }; alreadyRevoked: boolean; certificatesRevoked: number }>(flags, env, 'POST', `/v1/devices/${encodeURIComponent(ref)}/revoke`, { reason: flags.reason });
      if (flags.json) printJson(res);
      else process.stdout.write(res.alreadyRevoked ? `${res.device.id} was already revoked\n` : `revoked ${res.device.id}${res.device.name ? ` (${res.device.name})` : ''}: ${res.certificatesRevoked} certificate(s) revoked, KRL updated, live tunnel (if any) closed\n`);
    });

  addApiOptions(program.command('audit').description('the audit trail (admin or operator key)'))
    .option('--since <iso-time>').option('--action <action>').option('--actor <actor>').option('--limit <n>').option('--cursor <c>')
    .action(async (flags: ApiFlags & { since?: string; action?: string; actor?: string; limit?: string; cursor?: string }) => {
      const res = await callApi<Page<Record<string, unknown>>>(flags, env, 'GET', `/v1/audit${query({ since: flags.since, action: flags.action, actor: flags.actor, limit: flags.limit, cursor: flags.cursor })}`);
      show(flags, res, res.items, ['at', 'actor', 'action', 'target', 'outcome', 'remoteAddr']);
      if (!flags.json && res.nextCursor) process.stdout.write(`(more: --cursor ${res.nextCursor})\n`);
    });
}
