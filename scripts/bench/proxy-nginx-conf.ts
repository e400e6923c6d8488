/**
 * The nginx.conf of the proxy benchmark: one worker, files in NGINXDIR, a
 * static upstream with keepalive to the tunnel port (HTTPSLOT) served on
 * STATICPORT, no authentication (the hand-written config of the old
 * design), and beside it GENERATED, what `certunnel proxy nginx-config`
 * writes (auth_request to the broker per request).
 */
export function nginxConfig(nginxDir: string, httpSlot: number, staticPort: number, generated: string): string {
  return `user root;
worker_processes 1;
pid ${nginxDir}/nginx.pid;
error_log ${nginxDir}/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path ${nginxDir}/temp/body;
    proxy_temp_path ${nginxDir}/temp/proxy;
    fastcgi_temp_path ${nginxDir}/temp/fastcgi;
    uwsgi_temp_path ${nginxDir}/temp/uwsgi;
    scgi_temp_path ${nginxDir}/temp/scgi;
    upstream certunnel_tunnel { server 127.0.0.1:${httpSlot}; keepalive 64; }
    server {
        listen ${staticPort};
        location / { proxy_pass http://certunnel_tunnel; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }
    }
${generated.replace(/^/gm, '    ')}
}
`;
}
