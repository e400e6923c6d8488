/**
 * Where devices may dial the broker's SSH server: one endpoint for a single
 * broker, one per node for a fleet of several (all sharing the host key, the
 * host CA and the login). The list reaches the grant through
 * CoreDeps.sshEndpoints(), a function, so that whatever knows the live nodes
 * (a node registry) can answer it instead of the config.
 */
import type { CertificateGrantWire, SshAddressWire, SshEndpointWire } from '../../api/index.js';
import { formatPublicKey } from '../../ca/index.js';
import { splitHostPort, type BrokerConfig } from './config.js';
import type { TrustRoots } from './trust-roots.js';

/** ssh.endpoints, or else the one endpoint devices are told today (publicHost/publicPort or listen): DEFAULT. */
export function configuredSshEndpoints(config: Pick<BrokerConfig, 'ssh'>, fallback: SshAddressWire): readonly SshAddressWire[] {
  const listed = config.ssh.endpoints;
  if (!listed) return Object.freeze([{ host: fallback.host, port: fallback.port }]);
  return Object.freeze(listed.map((entry) => Object.freeze(splitHostPort(entry))));
}

/**
 * This broker's endpoint with the host key and host CA it presents right
 * now (the snapshot's): what an agent from before 0.5 pins, so it changes
 * only when a host-key or host-CA rotation commits.
 */
export function presentedSshEndpoint(deps: { readonly ssh: SshEndpointWire; readonly trustRoots: TrustRoots }): SshEndpointWire {
  const snapshot = deps.trustRoots.current();
  return { ...deps.ssh, hostKey: formatPublicKey(snapshot.hostKey.publicKey), hostCertificateAuthority: formatPublicKey(snapshot.hostCa) };
}

/**
 * The SSH part of a grant or of GET /v1/ca: `sshEndpoints` (every endpoint),
 * `ssh`, the first of them with the presented host key, host CA and login,
 * which agents from before the list read alone, and `trust`, what devices
 * are told to trust (during a rotation, the current and the next). An empty
 * list (no node known) is this broker's own endpoint. sshEndpoints comes
 * first in the JSON: the shell agent reads `"host"` with a greedy sed, which
 * finds the last one.
 */
export function sshGrantFields(deps: {
  readonly ssh: SshEndpointWire;
  readonly trustRoots: TrustRoots;
  sshEndpoints(): readonly SshAddressWire[];
}): Pick<CertificateGrantWire, 'sshEndpoints' | 'ssh' | 'trust'> {
  const listed = deps.sshEndpoints();
  const endpoints = listed.length > 0 ? listed.map((e) => ({ host: e.host, port: e.port })) : [{ host: deps.ssh.host, port: deps.ssh.port }];
  const first = endpoints[0]!;
  const { trust } = deps.trustRoots.current();
  return {
    sshEndpoints: endpoints,
    ssh: { ...presentedSshEndpoint(deps), host: first.host, port: first.port },
    trust: { hostKeys: [...trust.hostKeys], hostCertificateAuthorities: [...trust.hostCertificateAuthorities], apiPins: [...trust.apiPins] },
  };
}
