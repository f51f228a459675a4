/**
 * Requisition queries. Every index starts with `day` (store.ts), so a query lists the days of
 * its window (`day IN (...)`: one index seek per day) and names its index explicitly (the
 * journal has no ANALYZE statistics; the most selective criterion given drives the search:
 * egress port > user > workstation > client > host).
 *
 * Results are ordered by (day, start_ms, id): the same order as (start_ms, id), since day is
 * derived from start_ms, but one the index gives as it is (days of the IN list in ascending
 * order, then start_ms, then rowid), so SQLite skips sorting whole rows in a temporary b-tree.
 *
 * "Egress ip:port at time T": the connection that held that port may have started long before
 * T, so the search goes back by the longest connection ever finished (meta.max_duration_ms)
 * and keeps rows with start <= T + skew and (end >= T - skew or still open / never finished).
 */
import type Database from 'better-sqlite3';
import type { Criteria } from './criteria';
import { dayOf, type RecordRow } from './record';
import { getMeta } from './store';

export interface QueryPlan {
  sql: string;
  params: Array<string | number>;
}

export function planQuery(db: Database.Database, c: Criteria, skewMs: number): QueryPlan {
  const where: string[] = [];
  const params: Array<string | number> = [];
  let index: string;
  let fromDay: number;
  let toDay: number;
  if (c.egressPort !== undefined || c.active) {
    // connections open during [from, to] +/- skew, wherever they started
    const maxDur = Number(getMeta(db, 'max_duration_ms') ?? '0');
    fromDay = dayOf(c.fromMs - skewMs - maxDur);
    toDay = dayOf(c.toMs + skewMs);
    where.push('start_ms <= ?', '(end_ms IS NULL OR end_ms >= ?)');
    params.push(c.toMs + skewMs, c.fromMs - skewMs);
  } else {
    fromDay = dayOf(c.fromMs);
    toDay = dayOf(c.toMs);
    where.push('start_ms BETWEEN ? AND ?');
    params.push(c.fromMs, c.toMs);
  }
  index = c.egressPort !== undefined ? 'rec_egress' : c.user !== undefined ? 'rec_user' : c.workstation !== undefined ? 'rec_ws' : c.client !== undefined ? 'rec_client' : 'rec_host';
  if (c.egressPort !== undefined) { where.push('egress_port = ?'); params.push(c.egressPort); }
  if (c.egressIp !== undefined) { where.push('egress_ip = ?'); params.push(c.egressIp); }
  if (c.user !== undefined) { where.push('user = ?'); params.push(c.user); }
  if (c.workstation !== undefined) { where.push('workstation = ?'); params.push(c.workstation); }
  if (c.client !== undefined) { where.push('client_ip = ?'); params.push(c.client); }
  if (c.host !== undefined) { where.push('dest_host = ?'); params.push(c.host); }
  const days: number[] = [];
  for (let d = fromDay; d <= toDay; d++) days.push(d);
  const sql = `SELECT * FROM records INDEXED BY ${index} WHERE day IN (${days.join(',')}) AND ${where.join(' AND ')} ORDER BY day, start_ms, id`;
  return { sql, params };
}

export function queryRecords(db: Database.Database, c: Criteria, skewMs: number): RecordRow[] {
  const p = planQuery(db, c, skewMs);
  return db.prepare(p.sql).all(...p.params) as RecordRow[];
}
