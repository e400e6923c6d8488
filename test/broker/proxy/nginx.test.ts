/**
 * `certunnel proxy nginx-config` with Debian's nginx as the referee: nginx -t
 * accepts the generated configuration, and a real nginx (temporary prefix,
 * ephemeral port, TLS with the broker's *.<domain> certificate) routes device
 * hostnames through the broker-authorized tunnels, and the rest to the API.
 * Needs root and nginx (apt-get install nginx).
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { renderNginxConfig } from '../../../broker/proxy/nginx-config.js';
import { isBrokerError } from '../../../broker/core/errors.js';
import { runCli } from '../../../testkit/cli.js';
import { dataPaths } from '../../../testkit/broker.js';
import { freePortBlock, isListening } from '../../../testkit/gateway.js';
import { runCommand } from '../../../testkit/openssh.js';
import { waitFor } from '../../../testkit/ssh-client.js';
import { DOMAIN, deviceRequest, withFleet, type Fleet } from '../../../testkit/operator-fixture.js';

const NGINX = '/usr/sbin/nginx';
const CAN_RUN_NGINX = process.getuid?.() === 0 && existsSync(NGINX);
const nginxTest = CAN_RUN_NGINX ? test : test.skip;

/** A whole nginx.conf around the generated http-context snippet, everything inside DIR. */
async function wrap(dir: string, snippet: string): Promise<string> {
  await mkdir(join(dir, 'temp'), { recursive: true });
  await writeFile(join(dir, 'certunnel.conf'), snippet);
  const conf = join(dir, 'nginx.conf');
  await writeFile(
    conf,
    `user root;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 256; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/temp/body;
    proxy_temp_path ${dir}/temp/proxy;
    fastcgi_temp_path ${dir}/temp/fastcgi;
    uwsgi_temp_path ${dir}/temp/uwsgi;
    scgi_temp_path ${dir}/temp/scgi;
    include ${dir}/certunnel.conf;
}
`,
  );
  return conf;
}

async function startNginx(dir: string, conf: string, port: number): Promise<{ stop(): Promise<void>; log(): Promise<string> }> {
  const child: ChildProcess = spawn(NGINX, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log = (): Promise<string> => readFile(join(dir, 'error.log'), 'utf8').catch(() => '');
  try {
    await waitFor(async () => child.exitCode !== null || (await isListening(port)), 'nginx to listen');
    if (child.exitCode !== null) throw new Error(`nginx exited: ${await log()}`);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    log,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

async function withNginx(f: Fleet, fn: (nginxUrl: string, ca: string) => Promise<void>): Promise<void> {
  const paths = dataPaths(f.b.dir);
  const port = (await freePortBlock(1)).first;
  const generated = await runCli([
    'proxy', 'nginx-config', '--data', f.b.dir, '--listen', `127.0.0.1:${port}`, '--ssl-certificate', paths.tlsCert, '--ssl-certificate-key', paths.tlsKey,
  ]);
  if (generated.code !== 0) throw new Error(generated.stderr);
  const dir = join(f.b.dir, 'nginx');
  const conf = await wrap(dir, generated.stdout);
  const checked = await runCommand(NGINX, ['-t', '-p', dir, '-c', conf, '-e', join(dir, 'error.log')]);
  if (checked.code !== 0) throw new Error(`nginx -t: ${checked.stderr}`);
  const nginx = await startNginx(dir, conf, port);
  try {
    await fn(`https://127.0.0.1:${port}`, await readFile(paths.tlsCert, 'utf8'));
  } finally {
    await nginx.stop();
  }
}

test('ok/the generated configuration: auth_request to the broker, verified TLS to it, websocket headers, no credentials relayed', (t) => {
  const text = renderNginxConfig({ domain: 'fleet.example.com', brokerUrl: 'https://127.0.0.1:8443', brokerCertificate: '/srv/certunnel/tls/api.crt', tls: { certificate: '/etc/ssl/fleet.crt', key: '/etc/ssl/fleet.key' } });
  t.regex(text, /server_name "~\^\(\?<certunnel_device>\[a-z0-9\]\(\[a-z0-9-\]\{0,61\}\[a-z0-9\]\)\?\)\\\.fleet\\\.example\\\.com\$";/);
  t.regex(text, /auth_request \/\.certunnel-authorize;/);
  t.regex(text, /upstream certunnel_broker \{\n\s+server 127\.0\.0\.1:8443;\n\s+keepalive \d+;/);
  t.regex(text, /proxy_pass https:\/\/certunnel_broker\/v1\/proxy\/authorize;/);
  t.regex(text, /auth_request_set \$certunnel_port \$upstream_http_x_certunnel_upstream_port;/);
  t.regex(text, /proxy_pass http:\/\/127\.0\.0\.1:\$certunnel_port;/);
  // With the pool: a kept-alive upstream per http slot, chosen by the port the broker names.
  const pooled = renderNginxConfig({ domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443', pool: { first: 20000, last: 20005, perDevice: 2 } });
  t.deepEqual(pooled.match(/^upstream certunnel_\d+ .*$/gm), [
    'upstream certunnel_20001 { server 127.0.0.1:20001; keepalive 16; keepalive_timeout 30s; }',
    'upstream certunnel_20003 { server 127.0.0.1:20003; keepalive 16; keepalive_timeout 30s; }',
    'upstream certunnel_20005 { server 127.0.0.1:20005; keepalive 16; keepalive_timeout 30s; }',
  ]);
  t.regex(pooled, /proxy_pass http:\/\/certunnel_\$certunnel_port;/);
  t.regex(text, /proxy_set_header Cookie \$certunnel_cookie;/);
  t.regex(text, /proxy_set_header Authorization \$certunnel_authorization;/);
  t.regex(text, /proxy_ssl_verify on;\n\s+proxy_ssl_trusted_certificate \/srv\/certunnel\/tls\/api\.crt;/);
  t.regex(text, /listen 443 ssl;/);
  t.regex(text, /server_name fleet\.example\.com;/);
  // Unsafe input never reaches the file.
  for (const bad of [
    { domain: 'fleet.example.com; include /etc/passwd', brokerUrl: 'http://127.0.0.1:8443' },
    { domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443/x;' },
    { domain: 'fleet.example.com', brokerUrl: 'https://127.0.0.1:8443' },
    { domain: 'fleet.example.com', brokerUrl: 'http://127.0.0.1:8443', tls: { certificate: '/etc/ssl/a b.crt', key: '/k' } },
  ]) {
    const err = t.throws(() => renderNginxConfig(bad), undefined, JSON.stringify(bad));
    t.true(isBrokerError(err, 'BAD_REQUEST'), JSON.stringify(bad));
  }
});

nginxTest('ok/nginx -t accepts it, and nginx routes device hostnames through the broker-authorized tunnels', (t) =>
  withFleet(async (f) => {
    const dev = await f.enroll('kiosk-a', { connect: true });
    await f.enroll('kiosk-idle');
    const operatorKey = (await f.b.apiKey('operator')).apiKey!;
    const auth = { authorization: `Bearer ${operatorKey}` };
    await withNginx(f, async (url, ca) => {
      const ok = await deviceRequest(url, 'kiosk-a', { path: '/echo?via=nginx', headers: { ...auth, cookie: 'theme=dark; __Host-certunnel=v1.key_aaaaaaaaaaaaaaaa.1.zz' } }, ca);
      t.is(ok.status, 200, ok.body);
      t.is(ok.headers['x-device'], 'kiosk-a');
      const seen = dev.http!.requests.at(-1)!;
      t.is(seen.url, '/echo?via=nginx');
      t.is(seen.headers.authorization, undefined);
      t.is(seen.headers.cookie, 'theme=dark');
      t.is(seen.headers['x-forwarded-proto'], 'https');
      t.is(seen.headers['x-forwarded-for'], '127.0.0.1');
      t.regex(String(seen.headers.host), /^kiosk-a\.fleet\.test/);

      // Refusals are the broker's pages, with their status.
      const anon = await deviceRequest(url, 'kiosk-a', {}, ca);
      t.is(anon.status, 401);
      t.regex(anon.body, /href="\/\.certunnel\/login\?next=%2Fecho"/);
      const offline = await deviceRequest(url, 'kiosk-idle', { headers: auth }, ca);
      t.is(offline.status, 502);
      t.is(offline.headers['x-certunnel-error'], 'DEVICE_OFFLINE');
      t.is((await deviceRequest(url, 'kiosk-none', { headers: auth }, ca)).status, 404);

      // Cross-device CSRF through nginx: refused by the broker's authorize answer, never relayed.
      const nginxPort = new URL(url).port;
      const relayed = dev.http!.requests.length;
      const csrf = await deviceRequest(url, 'kiosk-a', { method: 'POST', path: '/echo', body: 'x=1', headers: { ...auth, 'content-length': '3', origin: `https://kiosk-b.${DOMAIN}:${nginxPort}` } }, ca);
      t.is(csrf.status, 403, csrf.body);
      t.is(csrf.headers['x-certunnel-error'], 'CROSS_ORIGIN_REFUSED');
      t.is(dev.http!.requests.length, relayed, 'the device received nothing');
      const own = await deviceRequest(url, 'kiosk-a', { method: 'POST', path: '/echo', body: 'x=1', headers: { ...auth, 'content-length': '3', origin: `https://kiosk-a.${DOMAIN}:${nginxPort}` } }, ca);
      t.is(own.status, 200, own.body);

      // Browser sign-in on the broker's origin through nginx, the code redeemed on the device hostname, then
      // the cookie is honoured by auth_request and not relayed.
      const body = new URLSearchParams({ apiKey: operatorKey, device: 'kiosk-a', next: '/echo' }).toString();
      const signIn = await deviceRequest(url, 'x', {
        method: 'POST', path: '/.certunnel/login', body,
        headers: { host: DOMAIN, 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(body.length), origin: `https://${DOMAIN}` },
      }, ca);
      t.is(signIn.status, 303, signIn.body);
      const callback = new URL(signIn.headers.location!);
      t.is(callback.origin, `https://kiosk-a.${DOMAIN}`);
      const login = await deviceRequest(url, 'kiosk-a', { path: `${callback.pathname}${callback.search}` }, ca);
      t.is(login.status, 303);
      t.is(login.headers.location, '/echo');
      const cookie = login.headers['set-cookie']![0]!.split(';')[0]!;
      const viaCookie = await deviceRequest(url, 'kiosk-a', { headers: { cookie: `${cookie}; lang=fr` } }, ca);
      t.is(viaCookie.status, 200);
      t.is(dev.http!.requests.at(-1)!.headers.cookie, 'lang=fr');

      // A WebSocket handshake and bytes both ways through nginx and the tunnel.
      const socket = tlsConnect({ host: '127.0.0.1', port: Number(new URL(url).port), servername: `kiosk-a.${DOMAIN}`, ca });
      const received: Buffer[] = [];
      socket.on('data', (c: Buffer) => received.push(c));
      await new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', reject);
      });
      socket.write(`GET /ws HTTP/1.1\r\nHost: kiosk-a.${DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: ${auth.authorization}\r\n\r\n`);
      await waitFor(() => Buffer.concat(received).includes('\r\n\r\n'), 'the 101');
      t.regex(Buffer.concat(received).toString(), /^HTTP\/1\.1 101 Switching Protocols[\s\S]*Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
      received.length = 0;
      socket.write('ping through nginx');
      await waitFor(() => Buffer.concat(received).toString() === 'ping through nginx', 'the echo');
      socket.destroy();

      // The broker's own hostname is the API.
      const health = await deviceRequest(url, 'x', { path: '/healthz', headers: { host: DOMAIN } }, ca);
      t.is(health.body, '{"status":"ok"}');
    });
  }));
