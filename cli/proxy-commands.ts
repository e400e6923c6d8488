/** `certunnel proxy nginx-config`: the nginx configuration for sites that front the broker with nginx. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { dataPaths, loadConfig, localApiUrl, renderNginxConfig, splitHostPort } from '../broker/compose/index.js';
import { CliError, printResult } from './output.js';

interface NginxFlags {
  data?: string;
  domain?: string;
  broker?: string;
  brokerCertificate?: string;
  brokerTlsName?: string;
  listen?: string;
  sslCertificate?: string;
  sslCertificateKey?: string;
  apiHost?: string[];
  portRange?: string;
  portsPerDevice?: string;
  json?: boolean;
}

/** The broker's API URL as a local nginx reaches it: what the running broker recorded, else its listen address. */
async function brokerUrlFromData(dir: string, env: NodeJS.ProcessEnv): Promise<{ url: string; domain: string; certificate?: string; pool: { first: number; last: number; perDevice: number } }> {
  const config = await loadConfig({ dataDir: dir, env });
  const paths = dataPaths(dir);
  const running = await readFile(paths.runtime, 'utf8').then((text) => (JSON.parse(text) as { apiPort?: number }).apiPort, () => undefined);
  return {
    url: localApiUrl(config, running ?? splitHostPort(config.api.listen).port),
    domain: config.domain,
    certificate: config.api.insecureHttp ? undefined : resolve(paths.tlsCert),
    pool: config.ports,
  };
}

/** --listen: host:port (or [v6]:port), or a bare port for compatibility with earlier releases. */
function parseListen(text: string | undefined): { host?: string; port: number } | undefined {
  if (text === undefined) return undefined;
  if (/^\d+$/.test(text)) return { port: Number(text) };
  const { host, port } = splitHostPort(text);
  if (!host || !/^\d+$/.test(text.slice(text.lastIndexOf(':') + 1))) throw new CliError('BAD_ARGUMENT', `--listen must be host:port or a port: ${text}`);
  return { host, port };
}

export function registerProxyCommands(program: Command, env: NodeJS.ProcessEnv): void {
  const proxy = program.command('proxy').description('the HTTP reverse proxy by hostname (<device>.<domain>)');
  proxy
    .command('nginx-config')
    .description('print an nginx configuration (http {} context) routing <device>.<domain> through the tunnels, authorized by the broker')
    .option('--data <dir>', 'read the domain, the broker URL and its TLS certificate from a local broker data directory')
    .option('--domain <domain>', 'device hostnames are <name>.<domain>')
    .option('--broker <url>', 'the broker API as nginx reaches it, e.g. http://127.0.0.1:8443')
    .option('--broker-certificate <file>', "with an https broker: its TLS certificate (data/tls/api.crt), which nginx verifies")
    .option('--broker-tls-name <name>', 'the name nginx checks in that certificate (default: the domain)')
    .option('--listen <host:port>', 'address nginx listens on, like every other listen option (a bare port, as before, binds every interface; default port 443 with --ssl-certificate, else 80)')
    .option('--ssl-certificate <file>', 'wildcard certificate for *.<domain>')
    .option('--ssl-certificate-key <file>', 'its key')
    .option('--api-host <name...>', 'more hostnames routed to the API (the domain itself always is)')
    .option('--port-range <first-last>', "the broker's port pool (from --data otherwise): kept-alive upstreams for every http slot")
    .option('--ports-per-device <n>', 'ports in each block (default 2)')
    .action(async (flags: NginxFlags) => {
      const fromData = flags.data ? await brokerUrlFromData(flags.data, env) : undefined;
      const domain = flags.domain ?? fromData?.domain;
      const brokerUrl = flags.broker ?? fromData?.url;
      if (!domain || !brokerUrl) throw new CliError('BAD_ARGUMENT', 'give --data, or --domain and --broker');
      if (Boolean(flags.sslCertificate) !== Boolean(flags.sslCertificateKey)) throw new CliError('BAD_ARGUMENT', '--ssl-certificate and --ssl-certificate-key go together');
      const listen = parseListen(flags.listen);
      let pool = fromData?.pool;
      if (flags.portRange) {
        const m = /^(\d+)-(\d+)$/.exec(flags.portRange);
        if (!m) throw new CliError('BAD_ARGUMENT', '--port-range must be FIRST-LAST, e.g. 20000-29999');
        pool = { first: Number(m[1]), last: Number(m[2]), perDevice: Number(flags.portsPerDevice ?? 2) };
      }
      const abs = (p: string | undefined): string | undefined => (p === undefined ? undefined : resolve(p));
      try {
        const config = renderNginxConfig({
            domain,
            brokerUrl,
            brokerCertificate: abs(flags.brokerCertificate) ?? (brokerUrl.startsWith('https:') ? fromData?.certificate : undefined),
            brokerTlsName: flags.brokerTlsName,
            listenPort: listen?.port,
            listenHost: listen?.host,
            tls: flags.sslCertificate ? { certificate: abs(flags.sslCertificate)!, key: abs(flags.sslCertificateKey)! } : undefined,
            apiHostnames: flags.apiHost,
            pool,
          });
        printResult(flags.json, { config }, config);
      } catch (err) {
        const e = err as { code?: string; message?: string };
        throw new CliError(e.code === 'BAD_REQUEST' ? 'BAD_ARGUMENT' : (e.code ?? 'INTERNAL'), e.message ?? String(err));
      }
    });
}
