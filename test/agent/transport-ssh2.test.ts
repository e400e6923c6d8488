/** agent/transport-ssh2.ts against the embedded gateway and a real sshd (cases in transport-cases.ts). */
import test from 'ava';
import { createSsh2Transport } from '../../agent/transport-ssh2.js';
import { registerTransportCases } from './transport-cases.js';

registerTransportCases(test, createSsh2Transport());
