/**
 * Where devices may dial the broker's SSH server: one endpoint for a single
 * broker, one per node for a fleet of several (all sharing the host key, the
 * host CA and the login). The list reaches the grant through
 * CoreDeps.sshEndpoints(), a function, so that whatever knows the live nodes
 * (a node registry) can answer it instead of the config.
 */
import type { CertificateGrantWire, SshAddressWire, SshEndpointWire } from '../../api/index.js';
import { splitHostPort, type BrokerConfig } from './config.js';

/** ssh.endpoints, or else the one endpoint devices are told today (publicHost/publicPort or listen): DEFAULT. */
export function configuredSshEndpoints(config: Pick<BrokerConfig, 'ssh'>, fallback: SshAddressWire): readonly SshAddressWire[] {
  const listed = config.ssh.endpoints;
  if (!listed) return Object.freeze([{ host: fallback.host, port: fallback.port }]);
  return Object.freeze(listed.map((entry) => Object.freeze(splitHostPort(entry))));
}

/**
 * The SSH part of a grant or of GET /v1/ca: `sshEndpoints` (every endpoint)
 * and `ssh`, the first of them with the host key, host CA and login, which
 * agents from before the list read alone. An empty list (no node known) is
 * this broker's own endpoint. sshEndpoints comes first in the JSON: the shell
 * agent reads `"host"` with a greedy sed, which finds the last one.
 */
export function sshGrantFields(deps: { readonly ssh: SshEndpointWire; sshEndpoints(): readonly SshAddressWire[] }): Pick<CertificateGrantWire, 'sshEndpoints' | 'ssh'> {
  const listed = deps.sshEndpoints();
  const endpoints = listed.length > 0 ? listed.map((e) => ({ host: e.host, port: e.port })) : [{ host: deps.ssh.host, port: deps.ssh.port }];
  const first = endpoints[0]!;
  return { sshEndpoints: endpoints, ssh: { ...deps.ssh, host: first.host, port: first.port } };
}
