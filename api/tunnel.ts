/**
 * The tunnel contract: what a device and an operator must do on the broker's
 * SSH server, as constants both sides share (DESIGN: "Port block", "The
 * broker's SSH server"). Declared once here; the broker's rules, sshd's
 * generated files, the agent and the CLI all read them from this file.
 */
import type { PortBlockWire } from './device.js';

/** The login a device uses (sshd in OpenSSH mode maps it to the device principals file; the gateway ignores it). */
export const DEVICE_LOGIN = 'tunnel';
/** The login an operator uses (sshd maps it to the operator principals file; the gateway ignores it). */
export const OPERATOR_LOGIN = 'operator';

/** The only address a device may bind and an operator may reach: the broker's IPv4 loopback. */
export const TUNNEL_HOST = '127.0.0.1';

/** Slots of a device's port block: slot 0 forwards the device's ssh, slot 1 its http service. */
export const SLOT = Object.freeze({ ssh: 0, http: 1 });

/** A device name: one lowercase DNS label (it becomes `<name>.<domain>` for the HTTP proxy). */
export const DEVICE_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** The port of SLOT in BLOCK, or undefined when the block has no such slot. */
export function slotPort(block: PortBlockWire, slot: number): number | undefined {
  const port = block.first + slot;
  return Number.isInteger(slot) && slot >= 0 && port <= block.last ? port : undefined;
}

/** Every port of BLOCK, first to last. */
export function blockPorts(block: PortBlockWire): number[] {
  return Array.from({ length: block.last - block.first + 1 }, (_, i) => block.first + i);
}
