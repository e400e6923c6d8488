/**
 * Whether a PostgreSQL database may receive a copy of a fleet (`certunnel
 * store migrate`): it must hold nothing but, at most, certunnel's empty
 * schema (what the migrations alone leave, e.g. after a copy that failed
 * and rolled back). Looked at twice: before the migrations run (so that a
 * refused database is not given our tables), and again inside the copy's
 * transaction with the tables locked (so that nothing written in between
 * is overwritten).
 *
 * Refusals, each changing nothing:
 * - DATABASE_NOT_EMPTY: tables that are not certunnel's (another
 *   application's database), or certunnel rows that are not another
 *   fleet's (a half-done copy made by other means, or a broker that ran
 *   on it without an init event);
 * - DATABASE_IN_USE: another fleet, known by the user CA its `broker.init`
 *   audit event names (the same code `certunnel init --database-url`
 *   gives a database that holds a fleet).
 */
import { BrokerError } from '../core/errors.js';
import { canonical, COPY_TABLES, KNEX_TABLES, SEEDED_ROWS, type CopyTable } from './copy-tables.js';

export interface Queryable {
  query(sql: string, values?: unknown[]): Promise<{ rows: Record<string, unknown>[] }>;
}

export type TargetState =
  | { readonly kind: 'empty' }
  /** Tables certunnel does not make. */
  | { readonly kind: 'foreign'; readonly tables: readonly string[] }
  /** certunnel tables holding rows (besides the migrations' seeds); userCa: the fleet's, from its init event. */
  | { readonly kind: 'rows'; readonly rows: Readonly<Record<string, number>>; readonly userCa: string | null };

/** The rows of TABLE that are not the migrations' own seed rows. */
async function dataRows(db: Queryable, table: CopyTable): Promise<number> {
  const count = Number((await db.query(`SELECT count(*) AS n FROM ${table}`)).rows[0]!.n);
  const seeds = SEEDED_ROWS[table];
  if (!seeds || count !== seeds.length) return count;
  const rows = (await db.query(`SELECT * FROM ${table}`)).rows.map((r) => Object.values(r).map((v) => canonical(v, 'text')));
  const isSeed = (row: readonly (string | null)[]) => seeds.some((s) => JSON.stringify(s) === JSON.stringify(row));
  return rows.every(isSeed) ? 0 : count;
}

async function initUserCa(db: Queryable): Promise<string | null> {
  const row = (await db.query("SELECT details FROM audit_events WHERE action = 'broker.init' ORDER BY id LIMIT 1")).rows[0];
  if (!row) return null;
  try {
    const userCa = (JSON.parse(String(row.details)) as { userCa?: unknown }).userCa;
    return typeof userCa === 'string' ? userCa : null;
  } catch {
    return null;
  }
}

/** What the database holds (its current schema for certunnel's tables; every other schema for anyone else's). */
export async function inspectTarget(db: Queryable): Promise<TargetState> {
  const tables = (
    await db.query(
      `SELECT table_schema AS schema, table_name AS name, table_schema = current_schema() AS current
         FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg\\_%'`,
    )
  ).rows as Array<{ schema: string; name: string; current: boolean }>;
  const ours = new Set<string>([...COPY_TABLES, ...KNEX_TABLES]);
  const foreign = tables.filter((t) => !t.current || !ours.has(t.name)).map((t) => `${t.schema}.${t.name}`);
  if (foreign.length > 0) return { kind: 'foreign', tables: foreign.sort() };
  const present = new Set(tables.map((t) => t.name));
  const rows: Record<string, number> = {};
  for (const table of COPY_TABLES) {
    if (!present.has(table)) continue;
    const n = await dataRows(db, table);
    if (n > 0) rows[table] = n;
  }
  if (Object.keys(rows).length === 0) return { kind: 'empty' };
  return { kind: 'rows', rows, userCa: present.has('audit_events') ? await initUserCa(db) : null };
}

/** Throws the refusal for a target that is not empty; FLEET_USER_CA is the migrating fleet's user CA fingerprint. */
export function refuseUnlessEmpty(state: TargetState, fleetUserCa: string): void {
  if (state.kind === 'empty') return;
  if (state.kind === 'foreign') {
    const shown = state.tables.slice(0, 5).join(', ') + (state.tables.length > 5 ? `, … (${state.tables.length} in all)` : '');
    throw new BrokerError('DATABASE_NOT_EMPTY', `the target database holds tables that are not certunnel's (${shown}); give an empty database`);
  }
  const held = Object.entries(state.rows).map(([t, n]) => `${t}: ${n}`).join(', ');
  if (state.userCa !== null && state.userCa !== fleetUserCa) {
    throw new BrokerError(
      'DATABASE_IN_USE',
      `the target database holds another fleet (user CA ${state.userCa}; this one's is ${fleetUserCa}); give an empty database`,
    );
  }
  throw new BrokerError(
    'DATABASE_NOT_EMPTY',
    `the target database already holds certunnel rows (${held}): a copy made before, or a broker ran on it; nothing was copied. Give an empty database (or drop and re-create this one)`,
  );
}
