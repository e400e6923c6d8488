/**
 * api.trustProxy: its own setting (config file or CERTUNNEL_TRUST_PROXY);
 * unset, as in data directories from before it existed, it follows
 * api.insecureHttp and the broker warns at start.
 */
import test from 'ava';
import { fromEnv, implicitTrustProxyWarning, parseConfig, trustsProxy } from '../../../broker/core/config.js';
import { isBrokerError } from '../../../broker/core/errors.js';

const combos: Array<[string, { insecureHttp?: boolean; trustProxy?: boolean }, boolean, boolean]> = [
  // name, api section, trusts X-Forwarded-For, warns at start
  ['ok/defaults', {}, false, false],
  ['ok/old-data-dir-behind-tls-proxy', { insecureHttp: true }, true, true],
  ['ok/insecure-http-and-trust-proxy', { insecureHttp: true, trustProxy: true }, true, false],
  ['ok/insecure-http-without-trust', { insecureHttp: true, trustProxy: false }, false, false],
  ['ok/https-behind-a-trusted-balancer', { insecureHttp: false, trustProxy: true }, true, false],
  ['ok/https-explicitly-untrusted', { insecureHttp: false, trustProxy: false }, false, false],
  ['ok/https-trust-unset', { insecureHttp: false }, false, false],
];
for (const [name, api, trusts, warns] of combos) {
  test(`trust proxy ${name}`, (t) => {
    const config = parseConfig({ api }, '/data');
    t.is(config.api.trustProxy, api.trustProxy, 'stored as given: unset stays unset');
    t.is(trustsProxy(config.api), trusts);
    const warning = implicitTrustProxyWarning(config.api);
    t.is(warning !== undefined, warns);
    if (warning) t.regex(warning, /api\.trustProxy/, 'the warning names the setting');
  });
}

test('fail/trustProxy must be a boolean', (t) => {
  const err = t.throws(() => parseConfig({ api: { trustProxy: 'yes' } }, '/data'));
  t.true(isBrokerError(err, 'CONFIG_INVALID'));
  t.regex(err!.message, /api\.trustProxy/);
});

const envs: Array<[string | undefined, boolean | undefined]> = [
  ['true', true], ['1', true], ['yes', true], ['false', false], ['0', false], ['', undefined], [undefined, undefined],
];
for (const [raw, want] of envs) {
  test(`env CERTUNNEL_TRUST_PROXY=${JSON.stringify(raw)}`, (t) => {
    const overrides = fromEnv(raw === undefined ? {} : { CERTUNNEL_TRUST_PROXY: raw });
    t.is(parseConfig(overrides, '/data').api.trustProxy, want);
  });
}

test('ok/ssh start-up limits default to 128:30:512, 32 per source, 15 s grace, 4 sessions per device', (t) => {
  const { ssh } = parseConfig({}, '/data');
  t.like(ssh, { maxStartups: '128:30:512', perSourceMaxStartups: 32, loginGraceSeconds: 15, maxSessionsPerDevice: 4 });
});

for (const bad of ['10:30', '100:30:10', '10:0:100', '10:101:100', '0:30:100', ' 10:30:100', '10:30:100\nMatch all']) {
  test(`fail/ssh.maxStartups ${JSON.stringify(bad)}`, (t) => {
    const err = t.throws(() => parseConfig({ ssh: { maxStartups: bad } }, '/data'));
    t.true(isBrokerError(err, 'CONFIG_INVALID'));
    t.regex(err!.message, /ssh\.maxStartups/);
  });
}

test('ok/ssh.sshdReloadCommand and ssh.sshdPidFile: unset by default, kept as given', (t) => {
  const { ssh } = parseConfig({}, '/data');
  t.is(ssh.sshdReloadCommand, undefined);
  t.is(ssh.sshdPidFile, undefined);
  t.like(parseConfig({ ssh: { sshdReloadCommand: 'systemctl reload ssh', sshdPidFile: '/run/sshd.pid' } }, '/data').ssh, { sshdReloadCommand: 'systemctl reload ssh', sshdPidFile: '/run/sshd.pid' });
});

for (const [name, ssh, setting] of [
  ['two-line-command', { sshdReloadCommand: 'systemctl reload ssh\nrm -rf /' }, 'ssh.sshdReloadCommand'],
  ['empty-command', { sshdReloadCommand: '' }, 'ssh.sshdReloadCommand'],
  ['relative-pid-file', { sshdPidFile: 'run/sshd.pid' }, 'ssh.sshdPidFile'],
] as const) {
  test(`fail/${name}`, (t) => {
    const err = t.throws(() => parseConfig({ ssh }, '/data'));
    t.true(isBrokerError(err, 'CONFIG_INVALID'));
    t.true(err!.message.includes(setting), err!.message);
  });
}
