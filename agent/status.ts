/**
 * `certunnel agent status`: what the state directory says (enrolled?,
 * device, port block, certificate expiry, how much of the broker it trusts) and what the running agent last
 * wrote to status.json (tunnel state, last error), for people or --json.
 */
import { type PortBlockWire, slotPort, TUNNEL_HOST } from '../api/index.js';
import type { ServiceMapping } from './config.js';
import { formatSshAddress, loadEnrollment, readStatus, runningAgentPid, sshEndpointsOf, statePaths } from './state-dir.js';
import { trustCounts, type TrustCounts } from './trust-set.js';

export interface AgentStatusReport {
  readonly enrolled: boolean;
  readonly stateDir: string;
  readonly deviceId: string | null;
  readonly name: string | null;
  readonly ports: Readonly<PortBlockWire> | null;
  readonly services: readonly ServiceRow[];
  readonly certificate: {
    readonly serial: string;
    readonly validAfter: string;
    readonly validBefore: string;
    readonly expired: boolean;
    readonly expiresInSeconds: number;
  } | null;
  readonly broker: {
    readonly url: string;
    readonly sshHost: string;
    readonly sshPort: number;
    /** Every SSH endpoint the agent may dial ("host:port"), the `ssh` one first. */
    readonly sshEndpoints: readonly string[];
  } | null;
  /** How many host keys, host CAs and API pins the agent accepts; fromBroker: a trust set from the broker (0.5 on), else `ssh`'s key and CA and the pin alone. */
  readonly trust: (TrustCounts & { readonly fromBroker: boolean }) | null;
  readonly tunnel: {
    /** The agent's state (connected, backoff, …); "not running" when no agent runs (revoked/closed stay visible). */
    readonly state: string;
    readonly running: boolean;
    readonly pid: number | null;
    readonly transport: string | null;
    /** The SSH endpoint ("host:port") the running agent is on, or last tried. */
    readonly endpoint: string | null;
    readonly since: string | null;
    readonly connectedSince: string | null;
  };
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | null;
}

export interface ServiceRow {
  readonly name: string;
  /** The service's port on the broker's loopback: its slot in the device's block. */
  readonly brokerPort: number;
  readonly target: string;
}

/** The services the block has a slot for (the agent forwards no others). */
function serviceRows(ports: PortBlockWire, services: readonly ServiceMapping[]): ServiceRow[] {
  return services.flatMap((m) => {
    const brokerPort = slotPort(ports, m.slot);
    return brokerPort === undefined ? [] : [{ name: m.name, brokerPort, target: `${m.host.includes(':') ? `[${m.host}]` : m.host}:${m.port}` }];
  });
}

export async function readAgentStatus(stateDir: string, services: readonly ServiceMapping[], now: Date = new Date()): Promise<AgentStatusReport> {
  const paths = statePaths(stateDir);
  const enrollment = await loadEnrollment(stateDir);
  const runtime = await readStatus(paths);
  const pid = await runningAgentPid(paths);
  const running = pid !== null && runtime !== null && runtime.pid === pid;
  const lastState = runtime?.state ?? null;
  const state = running ? lastState! : lastState === 'revoked' || lastState === 'closed' ? lastState : 'not running';
  const tunnel = {
    state,
    running,
    pid: running ? pid : null,
    transport: runtime?.transport ?? null,
    endpoint: running ? runtime?.endpoint ?? null : null,
    since: runtime?.since ?? null,
    connectedSince: running ? runtime?.connectedSince ?? null : null,
  };
  if (!enrollment) {
    return {
      enrolled: false, stateDir, deviceId: null, name: null, ports: null, services: [], certificate: null, broker: null, trust: null, tunnel,
      lastError: runtime?.lastError ?? null,
    };
  }
  const { state: s, certificate } = enrollment;
  const validBefore = Number(certificate.validBefore) * 1000;
  return {
    enrolled: true,
    stateDir,
    deviceId: s.deviceId,
    name: s.name,
    ports: s.ports,
    services: serviceRows(s.ports, services),
    certificate: {
      serial: certificate.serial.toString(),
      validAfter: new Date(Number(certificate.validAfter) * 1000).toISOString(),
      validBefore: new Date(validBefore).toISOString(),
      expired: now.getTime() >= validBefore,
      expiresInSeconds: Math.round((validBefore - now.getTime()) / 1000),
    },
    broker: { url: s.broker.url, sshHost: s.ssh.host, sshPort: s.ssh.port, sshEndpoints: sshEndpointsOf(s).map(formatSshAddress) },
    trust: { ...trustCounts(s.ssh, s.trust, s.broker.pin), fromBroker: s.trust !== undefined },
    tunnel,
    lastError: runtime?.lastError ?? null,
  };
}

function duration(seconds: number): string {
  const s = Math.abs(seconds);
  const text = s >= 86400 ? `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h` : s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

export function formatAgentStatus(r: AgentStatusReport): string {
  const lines: string[] = [];
  const row = (label: string, value: string): void => {
    lines.push(`${`${label}:`.padEnd(14)}${value}`);
  };
  row('enrolled', r.enrolled ? 'yes' : 'no');
  row('state dir', r.stateDir);
  if (r.enrolled) {
    row('device', `${r.deviceId}${r.name ? ` (${r.name})` : ''}`);
    row('ports', `${r.ports!.first}-${r.ports!.last}`);
    for (const s of r.services) row(`  ${s.name}`, `broker ${TUNNEL_HOST}:${s.brokerPort} -> ${s.target}`);
    const c = r.certificate!;
    row('certificate', `serial ${c.serial}, ${c.expired ? 'EXPIRED' : 'valid'} until ${c.validBefore} (${duration(c.expiresInSeconds)})`);
    row('broker', `${r.broker!.url}, ssh ${r.broker!.sshEndpoints.join(' ')}`);
    // Shown once the broker gave a set (0.5 on); before, the one key, CA and pin are what there always was.
    const tr = r.trust!;
    const plural = (n: number, one: string): string => `${n} ${one}${n === 1 ? '' : 's'}`;
    if (tr.fromBroker) row('trust', `${plural(tr.hostKeys, 'host key')}, ${plural(tr.hostCertificateAuthorities, 'host CA')}, ${plural(tr.apiPins, 'API pin')}`);
  }
  const t = r.tunnel;
  const via = t.endpoint ? `, ${t.state === 'connected' ? 'on' : 'last tried'} ${t.endpoint}` : '';
  const detail = t.running ? ` (pid ${t.pid}, ${t.transport}${via}${t.since ? `, since ${t.since}` : ''})` : t.since ? ` (last change ${t.since})` : '';
  row('tunnel', `${t.state}${detail}`);
  row('last error', r.lastError ? `${r.lastError.code} at ${r.lastError.at}: ${r.lastError.message}` : '-');
  return `${lines.join('\n')}\n`;
}
