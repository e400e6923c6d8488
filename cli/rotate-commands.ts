/**
 * `certunnel rotate start|status|commit|rollback`: rotations of the trust
 * roots over the HTTPS API (admin key; wire types api/rotation.ts; the
 * phases and what each root's rotation does: docs/rotation.md).
 */
import type { Command } from 'commander';
import { TRUST_ROOT_NAMES, type RotationResponse, type RotationStatusResponse, type RotationView, type TrustRootWire } from '../api/index.js';
import { addApiOptions, callApi, type ApiFlags } from './api-connection.js';
import { CliError, printResult } from './output.js';

/** What the next phase brings, by root: said after start and in status. */
const WHAT_LEARN_DOES: Readonly<Record<TrustRootWire, string>> = {
  'user-ca': 'certificates of both CAs log in; new device, operator and node certificates are signed by the next CA',
  'host-ca': 'grants and GET /v1/ca list both host CAs; the broker still presents its certificate from the current one',
  'host-key': 'grants and GET /v1/ca list both host keys; the broker still presents the current one',
  'api-tls': 'the API serves the next TLS identity too; grants and GET /v1/ca pin both',
};

function describeRotation(r: RotationView): string[] {
  return [
    `Rotation ${r.id} of ${r.root}: ${r.outcome ?? r.phase}`,
    `  from ${r.from}`,
    `  next ${r.next}`,
    `  started ${r.startedAt} by ${r.startedBy}${r.learnAt ? `; learn since ${r.learnAt}` : ''}${r.finishedAt ? `; finished ${r.finishedAt} by ${r.finishedBy}` : ''}`,
  ];
}

export function describeStatus(s: RotationStatusResponse): string {
  const { nodes, devices } = s;
  const lines = [
    ...describeRotation(s.rotation),
    `  nodes: ${nodes.acked} of ${nodes.up} up have loaded the next key${nodes.lagging.length > 0 ? ` (waiting for ${nodes.lagging.join(', ')})` : ''}`,
    `  devices: ${devices.learned} of ${devices.active} active have learned it`,
  ];
  if (s.rotation.phase === 'prepare') lines.push('', 'Next: learn begins once every node that is up has loaded the next key.');
  else lines.push('', `In learn: ${WHAT_LEARN_DOES[s.rotation.root]}.`);
  const lagging = devices.lagging.length + devices.laggingNotListed;
  if (lagging > 0) {
    lines.push('', `Lagging devices (${lagging}; they learn at their next renewal):`);
    for (const d of devices.lagging) lines.push(`  ${d.id}  ${d.name ?? '-'}  last seen ${d.lastSeenAt ?? 'never'}`);
    if (devices.laggingNotListed > 0) lines.push(`  … and ${devices.laggingNotListed} more`);
  }
  lines.push(
    '',
    lagging > 0
      ? `Commit now only with --force: ${forcedConsequence(s.rotation.root)}`
      : 'Ready: certunnel rotate commit',
  );
  return lines.join('\n');
}

/** What a forced commit does to devices that have not learned the next trust. */
function forcedConsequence(root: TrustRootWire): string {
  switch (root) {
    case 'user-ca':
      return 'lagging devices\' certificates are refused from then on; each is back once it renews with its device key (within certs.renewGraceSeconds of its certificate\'s expiry), otherwise it must be enrolled again.';
    case 'host-key':
      return 'lagging devices meet a host key they do not know at their next connection: each renews once over the API, learns the new key from the answer and connects (agents from 0.5 on; older ones at their next scheduled renewal).';
    case 'host-ca':
      return 'nothing is refused: the host key stays, so lagging devices connect as before and learn the new host CA at their next renewal.';
    case 'api-tls':
      return 'lagging devices\' pins no longer match the API\'s default key: the Node agent (0.5 on) renews under its pin\'s server name while this broker process serves the retired key (certs.renewGraceSeconds) and learns the new pin; the shell agent, older agents, and any device after that window or a broker restart need the new pin by hand (or enrollment again).';
  }
}

function parseRoot(value: string): TrustRootWire {
  if ((TRUST_ROOT_NAMES as readonly string[]).includes(value)) return value as TrustRootWire;
  throw new CliError('BAD_ARGUMENT', `the root must be one of ${TRUST_ROOT_NAMES.join(', ')}`);
}

export function registerRotateCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const rotate = program.command('rotate').description(`rotate a trust root cluster-wide (${TRUST_ROOT_NAMES.join(', ')}): start, status, commit, rollback (admin key)`);

  addApiOptions(rotate.command('start').argument('<root>', TRUST_ROOT_NAMES.join(' | ')).description('make the next key of ROOT and begin its rotation (prepare, then learn)'))
    .action(async (root: string, flags: ApiFlags) => {
      const res = await callApi<RotationResponse>(flags, env, 'POST', '/v1/rotations', { root: parseRoot(root) });
      printResult(flags.json, res, [
        ...describeRotation(res.rotation),
        '',
        `${res.rotation.phase === 'learn' ? 'In learn now' : 'In learn (once every node that is up has loaded the next key)'}: ${WHAT_LEARN_DOES[res.rotation.root]}.`,
        'Follow it with: certunnel rotate status',
      ].join('\n'));
    });

  addApiOptions(rotate.command('status').description('the rotation under way: phase, nodes that loaded the next key, devices that learned it, the lagging ones'))
    .action(async (flags: ApiFlags) => {
      const res = await callApi<RotationStatusResponse>(flags, env, 'GET', '/v1/rotations/current');
      printResult(flags.json, res, describeStatus(res));
    });

  addApiOptions(
    rotate.command('commit')
      .description('make the next key the current one everywhere and retire the old one (refused while devices lag, unless --force)')
      .option('--force', 'commit even though devices have not learned the next trust (or nodes not loaded the next key): the emergency path for a leaked key'),
  ).action(async (flags: ApiFlags & { force?: boolean }) => {
    const res = await callApi<RotationResponse>(flags, env, 'POST', '/v1/rotations/current/commit', flags.force ? { force: true } : {});
    printResult(flags.json, res, [
      ...describeRotation(res.rotation),
      '',
      `${res.rotation.root} is now ${res.rotation.next} on every node; the old key is kept in each data directory as *.retired-${res.rotation.id}.`,
      ...(res.rotation.outcome === 'forced' ? [`Forced: ${forcedConsequence(res.rotation.root)}`] : []),
    ].join('\n'));
  });

  addApiOptions(rotate.command('rollback').description('drop the next key: everything as before the rotation began'))
    .action(async (flags: ApiFlags) => {
      const res = await callApi<RotationResponse>(flags, env, 'POST', '/v1/rotations/current/rollback');
      printResult(flags.json, res, [...describeRotation(res.rotation), '', `Rolled back: ${res.rotation.from} stays current; the next key is dropped.`].join('\n'));
    });
}
