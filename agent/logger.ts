/**
 * The logger the agent writes to: pino's shape (an object of fields, then
 * a message), so the CLI hands it pino and tests a recorder. Fields name
 * codes and serials, never a token, a key or a whole certificate.
 */
export interface AgentLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}
