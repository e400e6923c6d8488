/**
 * The nginx configuration for sites that front the broker with nginx: the
 * same routing as the broker's built-in proxy (`<device>.<domain>` → the
 * device's http slot through its tunnel, anything else → the API), with
 * authentication delegated to the broker by auth_request
 * (GET /v1/proxy/authorize). Pure: input → text, for the http {} context.
 *
 * nginx's auth_request understands 2xx, 401 and 403 only; the broker answers
 * every refusal with one of those, and nginx then fetches the explaining
 * page (login form, "offline since …") from the broker, which renders it
 * for the device hostname. The device never sees the broker's credentials:
 * the authorize answer carries the Cookie and Authorization headers to send
 * on, with the broker's own removed.
 */
import { isIP, isIPv6 } from 'node:net';
import { BrokerError } from '../core/errors.js';
import { AUTHORIZE_HEADERS, DEVICE_NAME, RESERVED_PREFIX, SLOT } from '../../api/index.js';
import { isValidPool, poolBlocks, type PortPool } from '../core/port-pool.js';

export interface NginxConfigInput {
  /** Device hostnames are <name>.<domain>. */
  readonly domain: string;
  /** The broker's API as nginx reaches it: http://127.0.0.1:8443 (insecureHttp behind nginx) or https://…. */
  readonly brokerUrl: string;
  /** With an https brokerUrl: the broker's TLS certificate file, which nginx then verifies (data/tls/api.crt). */
  readonly brokerCertificate?: string;
  /** The name nginx checks in that certificate (one of its SANs); default: the domain. */
  readonly brokerTlsName?: string;
  /** Port nginx listens on; default 443 with TLS, 80 without. */
  readonly listenPort?: number;
  /** Address nginx binds (an IP address or a DNS name); default: every interface. */
  readonly listenHost?: string;
  /** The wildcard certificate for *.<domain> (and <domain>); without it nginx listens in plain HTTP. */
  readonly tls?: { readonly certificate: string; readonly key: string };
  /** Also route the API hostnames (the domain itself and these) to the broker. Default: the domain. */
  readonly apiHostnames?: readonly string[];
  /**
   * The broker's port pool. With it, every http slot gets an upstream block
   * with keepalive (nginx keeps connections only to upstream groups, and a
   * proxy_pass variable that names a group uses it), so requests reuse
   * tunnel connections instead of opening an SSH channel each. Without it
   * nginx connects to 127.0.0.1:<port> per request.
   */
  readonly pool?: PortPool;
}

/** One DNS label, as a device name is (api/tunnel.ts). */
const LABEL = DEVICE_NAME.source.replace(/^\^|\$$/g, '');
const DOMAIN = new RegExp(`^(?:${LABEL}\\.)*${LABEL}$`);
/** The label in nginx's server_name, with a plain group as nginx configurations generated before have it. */
const NGINX_LABEL = LABEL.replace('(?:', '(');
// nginx splits arguments on blanks and reads ; { } # $ and quotes: paths are limited to a safe alphabet.
const SAFE_PATH = /^\/[A-Za-z0-9._+/-]*$/;

function invalid(message: string): never {
  throw new BrokerError('BAD_REQUEST', message);
}

function checkInput(input: NginxConfigInput): { broker: URL; port: string } {
  if (!DOMAIN.test(input.domain)) invalid('domain must be a DNS name');
  let broker: URL;
  try {
    broker = new URL(input.brokerUrl);
  } catch {
    invalid('broker URL is not a URL');
  }
  if ((broker.protocol !== 'http:' && broker.protocol !== 'https:') || broker.pathname !== '/' || broker.search || broker.username) {
    invalid('broker URL must be http(s)://host:port with no path');
  }
  if (!/^[A-Za-z0-9.:[\]-]+$/.test(broker.host)) invalid('broker URL host has unexpected characters');
  if (broker.protocol === 'https:' && !input.brokerCertificate) invalid('an https broker needs its TLS certificate (data/tls/api.crt) so that nginx verifies it');
  for (const path of [input.brokerCertificate, input.tls?.certificate, input.tls?.key]) {
    if (path !== undefined && !SAFE_PATH.test(path)) invalid(`path ${JSON.stringify(path)} must be absolute, of [A-Za-z0-9._+/-]`);
  }
  for (const name of [input.brokerTlsName, ...(input.apiHostnames ?? [])]) {
    if (name !== undefined && !DOMAIN.test(name)) invalid(`${JSON.stringify(name)} is not a DNS name`);
  }
  const port = input.listenPort ?? (input.tls ? 443 : 80);
  if (!Number.isInteger(port) || port < 1 || port > 65535) invalid('listen port must be 1-65535');
  const host = input.listenHost;
  if (host !== undefined && !isIP(host) && !DOMAIN.test(host)) invalid(`listen host ${JSON.stringify(host)} is not an IP address or a DNS name`);
  // nginx's listen takes [v6]:port, v4:port, name:port or a bare port (every interface).
  return { broker, port: host === undefined ? `${port}` : `${isIPv6(host) ? `[${host}]` : host}:${port}` };
}

/** The http slot of every block the allocator can hand out. */
function httpSlots(pool: PortPool): number[] {
  if (!isValidPool(pool, SLOT.http + 1)) invalid(`pool must be whole ports with at least ${SLOT.http + 1} per device (slot ${SLOT.http} is http)`);
  return Array.from(poolBlocks(pool), (block) => block.first + SLOT.http);
}

function indent(lines: readonly string[], depth = 1): string {
  return lines.map((l) => (l ? `${'    '.repeat(depth)}${l}` : '')).join('\n');
}

/** What the two server blocks share, worked out once from the input. */
interface SharedDirectives {
  /** listen, and the wildcard certificate with TLS. */
  readonly listen: readonly string[];
  /** Verified TLS to an https broker; empty for http. */
  readonly brokerTls: readonly string[];
  /** The broker's upstream group, as proxy_pass names it. */
  readonly upstream: string;
  /** The body of a location relayed to the broker. */
  readonly toBroker: readonly string[];
}

function sharedDirectives(input: NginxConfigInput, broker: URL, port: string): SharedDirectives {
  // Through an upstream block, so that nginx keeps connections (and TLS sessions) to the broker alive:
  // one auth_request per request would otherwise cost a TCP (and TLS) handshake each.
  const upstream = `${broker.protocol}//certunnel_broker`;
  const listen = input.tls ? [`listen ${port} ssl;`, `ssl_certificate ${input.tls.certificate};`, `ssl_certificate_key ${input.tls.key};`] : [`listen ${port};`];
  const brokerTls =
    broker.protocol === 'https:'
      ? [
          '# The broker has a self-signed certificate: nginx verifies it against that very certificate.',
          'proxy_ssl_verify on;',
          `proxy_ssl_trusted_certificate ${input.brokerCertificate};`,
          `proxy_ssl_name ${input.brokerTlsName ?? input.domain};`,
          'proxy_ssl_server_name on;',
        ]
      : [];
  const toBroker = [
    `proxy_pass ${upstream};`,
    'proxy_http_version 1.1;',
    'proxy_set_header Connection "";',
    'proxy_set_header Host $host;',
    'proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
    'proxy_set_header X-Forwarded-Proto $scheme;',
    'proxy_set_header X-Forwarded-Host $host;',
  ];
  return { listen, brokerTls, upstream, toBroker };
}

/** The server for <device>.<domain>: the broker's paths, the auth_request, the relay to the tunnel port (POOLED: through the slot's upstream group). */
function deviceServer(input: NginxConfigInput, shared: SharedDirectives, pooled: boolean): string[] {
  const escapedDomain = input.domain.replace(/\./g, '\\.');
  const header = (name: string): string => `$upstream_http_${name.replace(/-/g, '_')}`;
  return [
    ...shared.listen,
    // Quoted: nginx reads { } in a bare regex as a block.
    `server_name "~^(?<certunnel_device>${NGINX_LABEL})\\.${escapedDomain}$";`,
    '',
    ...shared.brokerTls,
    ...(shared.brokerTls.length ? [''] : []),
    `# ${RESERVED_PREFIX}… (login, logout) belongs to the broker, never to the device.`,
    `location ${RESERVED_PREFIX} {`,
    ...shared.toBroker.map((l) => `    ${l}`),
    '}',
    '',
    '# The authorization subrequest: the broker checks the credential and finds the device.',
    'location = /.certunnel-authorize {',
    '    internal;',
    `    proxy_pass ${shared.upstream}/v1/proxy/authorize;`,
    '    proxy_http_version 1.1;',
    '    proxy_set_header Connection "";',
    '    proxy_pass_request_body off;',
    '    proxy_set_header Content-Length "";',
    '    proxy_set_header X-Forwarded-Host $host;',
    '    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
    '    proxy_set_header X-Original-URI $request_uri;',
    '    # The subrequest is a GET: the method, and the origin the browser addressed, for the cross-origin check.',
    '    proxy_set_header X-Original-Method $request_method;',
    '    proxy_set_header X-Original-Host $http_host;',
    '    proxy_set_header X-Forwarded-Proto $scheme;',
    '}',
    '',
    '# Why a request was refused (or the tunnel port did not answer): the broker renders the page.',
    'location @certunnel_page {',
    ...shared.toBroker.map((l) => `    ${l}`),
    '}',
    '',
    'location / {',
    '    auth_request /.certunnel-authorize;',
    `    auth_request_set $certunnel_port ${header(AUTHORIZE_HEADERS.upstreamPort)};`,
    `    auth_request_set $certunnel_cookie ${header(AUTHORIZE_HEADERS.cookie)};`,
    `    auth_request_set $certunnel_authorization ${header(AUTHORIZE_HEADERS.authorization)};`,
    '    error_page 401 403 502 504 = @certunnel_page;',
    '',
    pooled ? '    proxy_pass http://certunnel_$certunnel_port;' : '    proxy_pass http://127.0.0.1:$certunnel_port;',
    '    proxy_http_version 1.1;',
    '    proxy_set_header Host $host;',
    '    proxy_set_header Connection $certunnel_connection;',
    '    proxy_set_header Upgrade $http_upgrade;',
    '    # The broker\'s credentials stay here; the device\'s own cookies and Authorization go on.',
    '    proxy_set_header Cookie $certunnel_cookie;',
    '    proxy_set_header Authorization $certunnel_authorization;',
    '    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
    '    proxy_set_header X-Forwarded-Proto $scheme;',
    '    proxy_set_header X-Forwarded-Host $host;',
    '    # Stream bodies both ways (uploads, server-sent events); long-lived WebSockets.',
    '    proxy_buffering off;',
    '    proxy_request_buffering off;',
    '    client_max_body_size 0;',
    '    proxy_read_timeout 1h;',
    '    proxy_send_timeout 1h;',
    '}',
  ];
}

/** The server for the broker's API hostnames. */
function apiServer(input: NginxConfigInput, shared: SharedDirectives): string[] {
  const apiHosts = [...new Set([input.domain, ...(input.apiHostnames ?? [])])];
  return [
    ...shared.listen,
    `server_name ${apiHosts.join(' ')};`,
    ...(shared.brokerTls.length ? ['', ...shared.brokerTls] : []),
    '',
    'location / {',
    ...shared.toBroker.map((l) => `    ${l}`),
    '}',
  ];
}

export function renderNginxConfig(input: NginxConfigInput): string {
  const { broker, port } = checkInput(input);
  const origin = `${broker.protocol}//${broker.host}`;
  const brokerPort = broker.port || (broker.protocol === 'https:' ? '443' : '80');
  const shared = sharedDirectives(input, broker, port);
  const slots = input.pool ? httpSlots(input.pool) : [];
  const slotUpstreams = slots.length
    ? `# Each device's http slot (the second port of its block), kept alive: a connection is an SSH channel to the device.
${slots.map((p) => `upstream certunnel_${p} { server 127.0.0.1:${p}; keepalive 16; keepalive_timeout 30s; }`).join('\n')}

`
    : '';

  return `# certunnel: the HTTP proxy by hostname for *.${input.domain}, generated by \`certunnel proxy nginx-config\`.
# Include it in nginx's http {} context (e.g. /etc/nginx/conf.d/certunnel.conf).
# Every request for <device>.${input.domain} is authorized by the broker first
# (auth_request to ${origin}/v1/proxy/authorize: an operator API key as
# "Authorization: Bearer …", or the login cookie), then relayed to the device's
# http slot, a port on 127.0.0.1 that its tunnel holds. Refusals (login,
# unknown, revoked, offline) are pages the broker renders.

# The broker's API, kept alive.
upstream certunnel_broker {
    server ${broker.hostname}:${brokerPort};
    keepalive 16;
}

${slotUpstreams}# WebSocket (any Upgrade) requests keep their Upgrade; others get a plain keep-alive connection.
map $http_upgrade $certunnel_connection {
    default upgrade;
    ''      '';
}

server {
${indent(deviceServer(input, shared, slots.length > 0))}
}

# The broker's API on its own hostname(s).
server {
${indent(apiServer(input, shared))}
}
`;
}
