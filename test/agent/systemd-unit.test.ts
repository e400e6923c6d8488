/**
 * scripts/systemd/certunnel-agent.service: systemd itself (systemd-analyze
 * verify) finds nothing to complain about, and the directives the agent
 * relies on are there, with the exit statuses agent/errors.ts defines.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EXIT } from '../../agent/errors.js';
import { REPO_ROOT } from '../../testkit/cli.js';
import { hasSystemdAnalyze, unitDirectives, verifyUnit } from '../../testkit/systemd-unit.js';

const UNIT = join(REPO_ROOT, 'scripts', 'systemd', 'certunnel-agent.service');

test('the unit restarts always, except on the statuses a restart cannot fix; it is hardened and has its state directory', async (t) => {
  const d = unitDirectives(await readFile(UNIT, 'utf8'));
  const one = (key: string): string | undefined => d.get(key)?.[0];
  t.is(one('Restart'), 'always');
  t.regex(one('ExecStart') ?? '', /certunnel agent run --config \S+/);
  // The token as a credential (root's 0600 file, read by systemd), never in the world-readable agent.json.
  t.regex(one('ExecStart') ?? '', / --token-file \$\{CREDENTIALS_DIRECTORY\}\/enroll-token$/);
  t.deepEqual(d.get('LoadCredential'), ['enroll-token:/etc/certunnel/enroll-token']);
  t.deepEqual(d.get('SetCredential'), ['enroll-token:\\n'], 'the default when the file is absent: no token');
  t.deepEqual(one('RestartPreventExitStatus')?.split(' ').map(Number).sort((a, b) => a - b), [EXIT.USAGE, EXIT.NOT_ENROLLED, EXIT.REVOKED, EXIT.REFUSED]);
  t.false(one('RestartPreventExitStatus')?.split(' ').includes(String(EXIT.ERROR)), 'ordinary errors are retried');
  t.is(one('StateDirectory'), 'certunnel');
  t.is(one('StateDirectoryMode'), '0700');
  t.is(one('StartLimitIntervalSec'), '0');
  for (const [key, value] of <Array<[string, string]>>[['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['DynamicUser', 'yes'], ['CapabilityBoundingSet', '']]) {
    t.is(one(key), value, key);
  }
  t.is(d.get('MemoryDenyWriteExecute'), undefined, "V8's JIT needs W+X pages");
});

test('systemd-analyze verify accepts the unit without a warning', async (t) => {
  if (!(await hasSystemdAnalyze())) {
    t.log('systemd-analyze is not installed; skipped');
    t.pass();
    return;
  }
  const text = await readFile(UNIT, 'utf8');
  const result = await verifyUnit({ name: 'certunnel-agent.service', text });
  t.is(result.code, 0, result.stderr);
  t.is(result.stderr.trim(), '', 'no ignored or unknown directive');
  // And it does complain about a bad one (the check can fail).
  t.regex((await verifyUnit({ name: 'certunnel-agent.service', text: text.replace('Restart=always', 'Restart=sometimes') })).stderr, /restart specifier/);
});
