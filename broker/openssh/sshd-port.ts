/**
 * Which port the operator's sshd listens on, asked of sshd itself. In
 * OpenSSH mode the broker listens for no SSH; devices are told a port
 * (`ssh.publicPort`, else `ssh.listen`'s) and dial it, while sshd listens on
 * whatever its own `Port`/`ListenAddress` say (22 unless changed). When they
 * differ, every device gets ECONNREFUSED and nothing says why. `sshd -T -f
 * CONFIG` prints the effective configuration, with a `listenaddress
 * HOST:PORT` line per address it binds (sshd.c: the extended test mode), so
 * the broker compares those ports with the one devices are told, at start.
 *
 * An explicit `ssh.publicPort` is the operator saying which port reaches sshd
 * from the devices' side (a NAT or load balancer may map it), so a difference
 * is then only noted; without it, a difference is a misconfiguration.
 */
import { execFile } from 'node:child_process';

/** The ports of sshd's `listenaddress` lines (or, if it printed none, its `port` lines), sorted, unique. */
export function parseSshdListenPorts(effectiveConfig: string): number[] {
  const listen = new Set<number>();
  const port = new Set<number>();
  for (const line of effectiveConfig.split('\n')) {
    const m = /^(listenaddress|port)\s+(\S+)/i.exec(line.trim());
    if (!m) continue;
    if (m[1]!.toLowerCase() === 'port') {
      if (/^\d+$/.test(m[2]!)) port.add(Number(m[2]));
      continue;
    }
    // "0.0.0.0:22", "[::]:22"; a trailing " rdomain NAME" is not part of \S+.
    const p = /:(\d+)$/.exec(m[2]!);
    if (p) listen.add(Number(p[1]));
  }
  const ports = listen.size > 0 ? listen : port;
  return [...ports].filter((p) => p >= 1 && p <= 65535).sort((a, b) => a - b);
}

export interface SshdPortVerdict {
  /** SSHD_PORT_MISMATCH when sshd does not listen on the port devices are told; null when it does. */
  readonly code: 'SSHD_PORT_MISMATCH' | null;
  /** A difference the operator declared with ssh.publicPort (a NAT or load balancer in between): noted, not a problem. */
  readonly declared: boolean;
  readonly message: string;
}

/** Compares SSHD_PORTS with DEVICE_PORT, which devices are told by ssh.publicPort (PUBLIC_PORT_SET) or ssh.listen. */
export function judgeSshdPort(sshdPorts: readonly number[], devicePort: number, publicPortSet: boolean): SshdPortVerdict {
  const listens = sshdPorts.join(', ');
  if (sshdPorts.includes(devicePort)) return { code: null, declared: false, message: `sshd listens on port ${devicePort}, the port devices are told` };
  if (publicPortSet) {
    return {
      code: 'SSHD_PORT_MISMATCH', declared: true,
      message: `devices are told port ${devicePort} (ssh.publicPort) and sshd listens on ${listens}: right only if a NAT or load balancer forwards ${devicePort} to sshd`,
    };
  }
  return {
    code: 'SSHD_PORT_MISMATCH', declared: false,
    message:
      `devices are told port ${devicePort} (from ssh.listen; in OpenSSH mode the broker listens on no SSH port) but sshd listens on ${listens}: ` +
      `devices will get "connection refused". Set ssh.publicPort (or CERTUNNEL_SSH_PUBLIC_PORT) to ${sshdPorts[0]}, or make sshd listen on ${devicePort} (Port ${devicePort} in sshd_config)`,
  };
}

export interface ReadSshdPortsOptions {
  /** sshd's absolute path (it refuses to run from a relative one). */
  readonly sshdPath: string;
  /** The sshd_config the operator's sshd runs with (-f). */
  readonly configPath: string;
  readonly timeoutMs?: number;
}

/** `sshd -T -f CONFIG`: the ports it would listen on, or why it could not say (its first line of complaint). */
export function readSshdPorts(o: ReadSshdPortsOptions): Promise<{ ports: number[] } | { error: string }> {
  return new Promise((resolve) => {
    execFile(o.sshdPath, ['-T', '-f', o.configPath], { timeout: o.timeoutMs ?? 10_000, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const said = String(stderr).trim().split('\n').find((l) => l.trim() !== '');
        resolve({ error: said ?? err.message });
        return;
      }
      const ports = parseSshdListenPorts(String(stdout));
      resolve(ports.length > 0 ? { ports } : { error: 'sshd -T printed no port' });
    });
  });
}
