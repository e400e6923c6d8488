/**
 * Structured JSON logs (pino), one line per event. Secret-bearing fields are
 * redacted by path as a second line of defence; the first is never passing
 * secrets to a logger at all. By default the lines go to stderr: stdout
 * belongs to the command's own output (the broker's ready line, --json),
 * and systemd's journal takes both.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

const REDACT = [
  'token', '*.token', 'secret', '*.secret', 'apiKey', '*.apiKey', 'authorization', '*.authorization',
  'req.headers.authorization', 'req.headers["x-api-key"]', 'passphrase', '*.passphrase', 'privateKey', '*.privateKey',
];

export function createLogger(level: string, destination: DestinationStream = pino.destination(2)): Logger {
  return pino(
    {
      level,
      base: { service: 'certunnel-broker' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
