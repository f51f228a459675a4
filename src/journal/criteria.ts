/**
 * Selection criteria shared by requisition queries, exports and holds: a time window and at
 * least one identifying criterion. Parsing of command-line values lives here so the CLI,
 * queries and holds agree on them.
 */
import { isIP } from 'node:net';
import { InputError } from '../errors';

export interface Criteria {
  fromMs: number;
  toMs: number;
  client?: string;
  user?: string;
  workstation?: string;
  host?: string;
  egressIp?: string;
  egressPort?: number;
  /** --at: connections open at that instant (not only those that started then) */
  active?: boolean;
}

export const LEGAL_BASES = ['60-1', '77-1-1', '99-3'] as const;
export type LegalBasis = (typeof LEGAL_BASES)[number];

/** ISO 8601 with an explicit offset or Z (a bare local time is ambiguous: refused). */
export function parseIsoTime(s: string, flag: string): number {
  if (!/^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?)?(Z|[+-]\d{2}:?\d{2})?$/.test(s)) {
    throw new InputError(`${flag}: expected an ISO 8601 time such as 2025-03-14T10:22:05Z or 2025-03-14T11:22:05+01:00, got "${s}"`);
  }
  if (s.length > 10 && !/(Z|[+-]\d{2}:?\d{2})$/.test(s)) {
    throw new InputError(`${flag}: "${s}" has no time zone; add Z (UTC) or an offset such as +01:00`);
  }
  const ms = Date.parse(s.length === 10 ? `${s}T00:00:00Z` : s);
  if (!Number.isFinite(ms)) throw new InputError(`${flag}: not a valid time: "${s}"`);
  return ms;
}

export function hasIdentifying(c: Criteria): boolean {
  return c.client !== undefined || c.user !== undefined || c.workstation !== undefined || c.host !== undefined || c.egressPort !== undefined;
}

export interface CriteriaFlags {
  from?: string;
  to?: string;
  at?: string;
  client?: string;
  user?: string;
  workstation?: string;
  host?: string;
  egressIp?: string;
  egressPort?: string;
}

/** Builds criteria from command-line flags; `requireIdentifying` for queries and exports. */
export function criteriaFromFlags(f: CriteriaFlags, requireIdentifying: boolean): Criteria {
  let fromMs: number;
  let toMs: number;
  if (f.at !== undefined) {
    if (f.from !== undefined || f.to !== undefined) throw new InputError('--at cannot be combined with --from/--to');
    fromMs = toMs = parseIsoTime(f.at, '--at');
  } else {
    if (f.from === undefined || f.to === undefined) throw new InputError('a time window is required: --from ISO and --to ISO (or --at ISO)');
    fromMs = parseIsoTime(f.from, '--from');
    toMs = parseIsoTime(f.to, '--to');
    if (toMs < fromMs) throw new InputError(`--to (${f.to}) is before --from (${f.from})`);
  }
  const c: Criteria = { fromMs, toMs };
  if (f.at !== undefined) c.active = true;
  if (f.client !== undefined) {
    if (isIP(f.client) === 0) throw new InputError(`--client: expected an IP address, got "${f.client}"`);
    c.client = f.client;
  }
  if (f.user !== undefined) c.user = nonEmpty(f.user, '--user');
  if (f.workstation !== undefined) c.workstation = nonEmpty(f.workstation, '--workstation');
  if (f.host !== undefined) c.host = nonEmpty(f.host, '--host').toLowerCase().replace(/\.$/, '');
  if (f.egressIp !== undefined) {
    if (isIP(f.egressIp) === 0) throw new InputError(`--egress-ip: expected an IP address, got "${f.egressIp}"`);
    if (f.egressPort === undefined) throw new InputError('--egress-ip needs --egress-port');
    c.egressIp = f.egressIp;
  }
  if (f.egressPort !== undefined) {
    const n = Number(f.egressPort);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InputError(`--egress-port: expected a port from 1 to 65535, got "${f.egressPort}"`);
    c.egressPort = n;
  }
  if (requireIdentifying && !hasIdentifying(c)) {
    throw new InputError('at least one criterion is required: --client, --user, --workstation, --host or --egress-port');
  }
  return c;
}

function nonEmpty(s: string, flag: string): string {
  if (s.trim() === '') throw new InputError(`${flag}: empty value`);
  return s;
}

/**
 * A row-level SQL predicate over `records` (for holds): the window applies to start_ms.
 * Returns the SQL and its parameters, in order.
 */
export function rowPredicate(c: Criteria): { sql: string; params: Array<string | number> } {
  const parts = ['start_ms BETWEEN ? AND ?'];
  const params: Array<string | number> = [c.fromMs, c.toMs];
  if (c.client !== undefined) { parts.push('client_ip = ?'); params.push(c.client); }
  if (c.user !== undefined) { parts.push('user = ?'); params.push(c.user); }
  if (c.workstation !== undefined) { parts.push('workstation = ?'); params.push(c.workstation); }
  if (c.host !== undefined) { parts.push('dest_host = ?'); params.push(c.host); }
  if (c.egressIp !== undefined) { parts.push('egress_ip = ?'); params.push(c.egressIp); }
  if (c.egressPort !== undefined) { parts.push('egress_port = ?'); params.push(c.egressPort); }
  return { sql: `(${parts.join(' AND ')})`, params };
}

/** Criteria as plain JSON for audit entries, holds and manifests (times in ISO UTC). */
export function criteriaJson(c: Criteria): Record<string, string | number> {
  const o: Record<string, string | number> = { from: new Date(c.fromMs).toISOString(), to: new Date(c.toMs).toISOString() };
  if (c.client !== undefined) o['client'] = c.client;
  if (c.user !== undefined) o['user'] = c.user;
  if (c.workstation !== undefined) o['workstation'] = c.workstation;
  if (c.host !== undefined) o['host'] = c.host;
  if (c.egressIp !== undefined) o['egressIp'] = c.egressIp;
  if (c.egressPort !== undefined) o['egressPort'] = c.egressPort;
  if (c.active) o['openAt'] = 1;
  return o;
}

export function criteriaFromJson(o: Record<string, string | number>): Criteria {
  const c: Criteria = { fromMs: Date.parse(String(o['from'])), toMs: Date.parse(String(o['to'])) };
  if (o['client'] !== undefined) c.client = String(o['client']);
  if (o['user'] !== undefined) c.user = String(o['user']);
  if (o['workstation'] !== undefined) c.workstation = String(o['workstation']);
  if (o['host'] !== undefined) c.host = String(o['host']);
  if (o['egressIp'] !== undefined) c.egressIp = String(o['egressIp']);
  if (o['egressPort'] !== undefined) c.egressPort = Number(o['egressPort']);
  return c;
}
