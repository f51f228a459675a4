/**
 * Preservation holds: records matching an active hold (time window on start_ms + criteria)
 * survive purges until the hold is released. Placing and releasing a hold each append a signed
 * event to the journal's event chain (who, when, which requisition, which criteria).
 */
import type Database from 'better-sqlite3';
import { InputError } from '../errors';
import { appendEvent } from './chain';
import { criteriaFromJson, criteriaJson, rowPredicate, type Criteria } from './criteria';
import type { Signer } from './keys';

export interface Hold {
  id: number;
  requisition: string;
  from_ms: number;
  to_ms: number;
  criteria: string;
  created_ms: number;
  created_by: string;
  released_ms: number | null;
  released_by: string | null;
}

export function activeHolds(db: Database.Database): Hold[] {
  return db.prepare('SELECT * FROM holds WHERE released_ms IS NULL ORDER BY id').all() as Hold[];
}

export function listHolds(db: Database.Database): Hold[] {
  return db.prepare('SELECT * FROM holds ORDER BY id').all() as Hold[];
}

/** SQL matching any active hold ('0' when there is none). */
export function holdsPredicate(holds: Hold[]): { sql: string; params: Array<string | number> } {
  if (holds.length === 0) return { sql: '(0)', params: [] };
  const parts: string[] = [];
  const params: Array<string | number> = [];
  for (const h of holds) {
    const p = rowPredicate(criteriaFromJson(JSON.parse(h.criteria) as Record<string, string | number>));
    parts.push(p.sql);
    params.push(...p.params);
  }
  return { sql: `(${parts.join(' OR ')})`, params };
}

export function placeHold(db: Database.Database, journalId: string, signer: Signer, requisition: string, c: Criteria, operator: string, nowMs = Date.now()): Hold {
  return db.transaction(() => {
    const info = db.prepare(`INSERT INTO holds (requisition, from_ms, to_ms, criteria, created_ms, created_by)
      VALUES (?, ?, ?, ?, ?, ?)`).run(requisition, c.fromMs, c.toMs, JSON.stringify(criteriaJson(c)), nowMs, operator);
    const id = Number(info.lastInsertRowid);
    const matching = (db.prepare(`SELECT count(*) AS n FROM records WHERE ${rowPredicate(c).sql}`).get(...rowPredicate(c).params) as { n: number }).n;
    appendEvent(db, journalId, signer, 'hold', { hold: id, requisition, criteria: criteriaJson(c), operator, matching }, nowMs);
    return db.prepare('SELECT * FROM holds WHERE id = ?').get(id) as Hold;
  }).immediate();
}

/** Releases every active hold of `requisition`; returns them. */
export function releaseHolds(db: Database.Database, journalId: string, signer: Signer, requisition: string, operator: string, nowMs = Date.now()): Hold[] {
  return db.transaction(() => {
    const holds = db.prepare('SELECT * FROM holds WHERE requisition = ? AND released_ms IS NULL ORDER BY id').all(requisition) as Hold[];
    if (holds.length === 0) throw new InputError(`no active hold for requisition "${requisition}"`);
    const upd = db.prepare('UPDATE holds SET released_ms = ?, released_by = ? WHERE id = ?');
    for (const h of holds) {
      upd.run(nowMs, operator, h.id);
      appendEvent(db, journalId, signer, 'release', { hold: h.id, requisition, operator }, nowMs);
    }
    return holds;
  }).immediate();
}
