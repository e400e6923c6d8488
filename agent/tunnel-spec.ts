/**
 * What the agent asks a transport for, from its enrollment and config: one
 * of the broker's SSH endpoints and the host keys it trusts, the device key and
 * certificate, and one remote forward per configured service whose slot
 * lies inside the device's port block (slot N is broker port first + N).
 */
import { slotPort, type PortBlockWire, type SshAddressWire } from '../api/index.js';
import type { AgentConfig, ServiceMapping } from './config.js';
import { pinnedHostKeys, type Enrollment } from './state-dir.js';
import type { ForwardSpec, TunnelSpec } from './transport.js';

/** A configured service that gets no forward: its slot is past the end of the block. */
export interface SkippedService {
  readonly service: string;
  readonly slot: number;
  readonly blockSize: number;
}

/** The forwards PORTS implies for SERVICES, and the services left out. */
export function forwardsFor(services: readonly ServiceMapping[], ports: PortBlockWire): { forwards: ForwardSpec[]; skipped: SkippedService[] } {
  const blockSize = ports.last - ports.first + 1;
  const forwards: ForwardSpec[] = [];
  const skipped: SkippedService[] = [];
  for (const s of services) {
    const remotePort = slotPort(ports, s.slot);
    if (remotePort !== undefined) forwards.push({ name: s.name, remotePort, localHost: s.host, localPort: s.port });
    else skipped.push({ service: s.name, slot: s.slot, blockSize });
  }
  return { forwards, skipped };
}

/**
 * The tunnel ENROLLMENT opens to ENDPOINT (one of sshEndpointsOf(state);
 * default the `ssh` endpoint), carrying FORWARDS, with the config's
 * timeouts and keepalives. Every endpoint takes the same login and presents
 * the same host key.
 */
export function tunnelSpecFor(config: AgentConfig, enrollment: Enrollment, forwards: readonly ForwardSpec[], endpoint?: SshAddressWire): TunnelSpec {
  const { state, paths } = enrollment;
  const hostKeys = pinnedHostKeys(state);
  return {
    host: endpoint?.host ?? state.ssh.host, port: endpoint?.port ?? state.ssh.port, username: state.ssh.username, bindAddress: config.ssh.bindAddress,
    key: enrollment.key, keyPath: paths.key, certificateLine: enrollment.certificateLine, certificatePath: paths.certificate,
    hostKey: hostKeys[0]!, acceptedHostKeys: hostKeys, knownHostsPath: paths.knownHosts, forwards,
    keepaliveIntervalMs: config.keepalive.intervalSeconds * 1000, keepaliveCountMax: config.keepalive.countMax,
    connectTimeoutMs: config.connectTimeoutSeconds * 1000, pidFile: paths.sshPid,
  };
}
