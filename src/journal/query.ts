/**
 * Requisition queries. The indexes live in NAME.index.db (index-db.ts), attached as `ix`; every
 * index key starts with `day`, so a query lists the days of its window (`day IN (...)`: one
 * seek per day) in the index of its most selective criterion (egress port > user >
 * workstation > client > host), then reads the rows by id. Three parts, joined by id:
 *   indexed   ids <= watermark, through the index
 *   tail      ids > watermark, not indexed yet: a rowid range of `records` (the last seconds)
 *   pending   ids <= watermark still open when indexed (their egress entry comes when final)
 * Without an index (missing, another journal's), `records` is scanned whole: correct, slower.
 * CROSS JOIN fixes the join order (index or pending list outside, `records` by id inside):
 * without statistics SQLite may otherwise scan `records` for the small pending list.
 *
 * "Egress ip:port at time T": the connection that held that port may have started long before
 * T, so the search goes back by the longest connection ever finished (meta.max_duration_ms)
 * and keeps rows with start <= T + skew and (end >= T - skew or still open / never finished).
 */
import type Database from 'better-sqlite3';
import type { Criteria } from './criteria';
import { INDEX_ALIAS, INDEXES, type AttachedIndex, type IndexKind } from './index-db';
import { dayOf, type RecordRow } from './record';
import { getMeta } from './store';

export interface QueryPlan {
  /** SQL of each part; each takes `params` (then the part's own, see below) */
  parts: Array<{ sql: string; params: Array<string | number> }>;
}

/** The index a query uses: its most selective criterion. */
export function indexKindFor(c: Criteria): IndexKind {
  return c.egressPort !== undefined ? 'egressPort' : c.user !== undefined ? 'user' : c.workstation !== undefined ? 'workstation' : c.client !== undefined ? 'client' : 'host';
}

function indexKey(c: Criteria, kind: IndexKind): string | number | undefined {
  return kind === 'egressPort' ? c.egressPort : kind === 'user' ? c.user : kind === 'workstation' ? c.workstation : kind === 'client' ? c.client : c.host;
}

export function planQuery(db: Database.Database, c: Criteria, skewMs: number, index: AttachedIndex | null): QueryPlan {
  const where: string[] = [];
  const params: Array<string | number> = [];
  let fromDay: number;
  let toDay: number;
  let startTo: number;
  let startFrom: number | null;
  if (c.egressPort !== undefined || c.active) {
    // connections open during [from, to] +/- skew, wherever they started
    const maxDur = Number(getMeta(db, 'max_duration_ms') ?? '0');
    fromDay = dayOf(c.fromMs - skewMs - maxDur);
    toDay = dayOf(c.toMs + skewMs);
    startFrom = null;
    startTo = c.toMs + skewMs;
    where.push('r.start_ms <= ?', '(r.end_ms IS NULL OR r.end_ms >= ?)');
    params.push(c.toMs + skewMs, c.fromMs - skewMs);
  } else {
    fromDay = dayOf(c.fromMs);
    toDay = dayOf(c.toMs);
    startFrom = c.fromMs;
    startTo = c.toMs;
    where.push('r.start_ms BETWEEN ? AND ?');
    params.push(c.fromMs, c.toMs);
  }
  if (c.egressPort !== undefined) { where.push('r.egress_port = ?'); params.push(c.egressPort); }
  if (c.egressIp !== undefined) { where.push('r.egress_ip = ?'); params.push(c.egressIp); }
  if (c.user !== undefined) { where.push('r.user = ?'); params.push(c.user); }
  if (c.workstation !== undefined) { where.push('r.workstation = ?'); params.push(c.workstation); }
  if (c.client !== undefined) { where.push('r.client_ip = ?'); params.push(c.client); }
  if (c.host !== undefined) { where.push('r.dest_host = ?'); params.push(c.host); }
  const pred = where.join(' AND ');
  if (index === null) return { parts: [{ sql: `SELECT r.* FROM records r WHERE ${pred}`, params }] };

  const kind = indexKindFor(c);
  const { table, column } = INDEXES[kind];
  const days: number[] = [];
  for (let d = fromDay; d <= toDay; d++) days.push(d);
  const key = indexKey(c, kind)!;
  const startCond = startFrom === null ? 'x.start_ms <= ?' : 'x.start_ms BETWEEN ? AND ?';
  const startParams = startFrom === null ? [startTo] : [startFrom, startTo];
  return {
    parts: [
      {
        sql: `SELECT r.* FROM ${INDEX_ALIAS}.${table} x CROSS JOIN records r ON r.id = x.id
          WHERE x.day IN (${days.join(',')}) AND x.${column} = ? AND ${startCond} AND x.id <= ? AND ${pred}`,
        params: [key, ...startParams, index.watermark, ...params],
      },
      { sql: `SELECT r.* FROM records r WHERE r.id > ? AND ${pred}`, params: [index.watermark, ...params] },
      { sql: `SELECT r.* FROM ${INDEX_ALIAS}.pending p CROSS JOIN records r ON r.id = p.id WHERE ${pred}`, params },
    ],
  };
}

/** The matching records in (start_ms, id) order, each once. Run it inside one read transaction. */
export function queryRecords(db: Database.Database, c: Criteria, skewMs: number, index: AttachedIndex | null = null): RecordRow[] {
  const plan = planQuery(db, c, skewMs, index);
  const byId = new Map<number, RecordRow>();
  for (const part of plan.parts) {
    for (const r of db.prepare(part.sql).all(...part.params) as RecordRow[]) byId.set(r.id, r);
  }
  return [...byId.values()].sort((a, b) => a.start_ms - b.start_ms || a.id - b.id);
}
