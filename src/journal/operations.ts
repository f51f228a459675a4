/**
 * What the `gardefou journal ...` commands do, as functions (the CLI only parses and prints).
 * Order for query and export: access check -> read the matching records in one read
 * transaction -> append the audit entry (with the row count) -> only then return or write them.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import type Database from 'better-sqlite3';
import type { JournalConfig } from '../config';
import { InputError } from '../errors';
import { checkOperator } from './access';
import { appendAudit, openAudit, readAudit, type AuditCheck } from './audit';
import { criteriaJson, type Criteria, type LegalBasis } from './criteria';
import { verifyExport, writeExport, type ExportCheck, type Manifest } from './export';
import { attachIndex } from './index-db';
import { listHolds, placeHold, releaseHolds, type Hold } from './holds';
import { loadPublicKey, loadSigner, type Signer } from './keys';
import { DEFAULT_CHUNK_ROWS, runPurge, type PurgeResult } from './purge';
import { queryRecords } from './query';
import type { RecordRow } from './record';
import { JournalError, getMeta, journalFiles, openStore } from './store';
import { verifyJournal, type VerifyReport } from './verify';

export interface Requisition {
  requisition: string;
  authority: string;
  basis: LegalBasis;
}

function withStore<T>(cfg: JournalConfig, readonly: boolean, fn: (db: Database.Database, journalId: string) => T): T {
  const db = openStore(cfg.path, { readonly, group: cfg.operatorGroup });
  try {
    const id = getMeta(db, 'journal_id');
    if (id === null) throw new JournalError(`journal ${cfg.path} was never started (no journal id)`);
    return fn(db, id);
  } finally {
    db.close();
  }
}

function trySigner(cfg: JournalConfig): Signer | null {
  try {
    return loadSigner(journalFiles(cfg.path, cfg.keyFile).key);
  } catch {
    return null;
  }
}

function requireSigner(cfg: JournalConfig, what: string): Signer {
  const key = journalFiles(cfg.path, cfg.keyFile).key;
  try {
    return loadSigner(key);
  } catch (err) {
    throw new JournalError(`${what} needs the journal key ${key}, which this user cannot read (run it as the service user or root, e.g. with sudo): ${(err as Error).message}`);
  }
}

function audited(cfg: JournalConfig, journalId: string, operator: string, req: Requisition, c: Criteria, action: 'query' | 'export', rows: number, detail: Record<string, string | number>): void {
  const files = journalFiles(cfg.path, cfg.keyFile);
  const adb = openAudit(files.audit, cfg.operatorGroup);
  try {
    appendAudit(adb, journalId, trySigner(cfg), {
      time_ms: Date.now(), operator, action, requisition: req.requisition, authority: req.authority, basis: req.basis,
      criteria: criteriaJson(c), rows, detail,
    });
  } finally {
    adb.close();
  }
}

function read(db: Database.Database, journalId: string, c: Criteria, cfg: JournalConfig): Array<RecordRow & { blk: number | null }> {
  const index = attachIndex(db, journalFiles(cfg.path, cfg.keyFile).index, journalId);
  return db.transaction(() => queryRecords(db, c, cfg.skewToleranceSeconds * 1000, index))() as Array<RecordRow & { blk: number | null }>;
}

export function journalQuery(cfg: JournalConfig, req: Requisition, c: Criteria, format: string): RecordRow[] {
  const operator = checkOperator(cfg.path, cfg.operatorGroup);
  return withStore(cfg, true, (db, journalId) => {
    const rows = read(db, journalId, c, cfg);
    audited(cfg, journalId, operator, req, c, 'query', rows.length, { format });
    return rows;
  });
}

export function journalExport(cfg: JournalConfig, req: Requisition, c: Criteria, outDir: string, provider = os.hostname()): Manifest {
  const operator = checkOperator(cfg.path, cfg.operatorGroup);
  const signer = requireSigner(cfg, 'export');
  return withStore(cfg, true, (db, journalId) => {
    const rows = read(db, journalId, c, cfg);
    audited(cfg, journalId, operator, req, c, 'export', rows.length, { out: outDir });
    return writeExport(db, signer, { ...req, operator, provider, journalId, criteria: c }, rows, outDir);
  });
}

export function journalVerify(cfg: JournalConfig, pubFile: string | null): VerifyReport {
  checkOperator(cfg.path, cfg.operatorGroup);
  const files = journalFiles(cfg.path, cfg.keyFile);
  const pub = loadPublicKey(pubFile ?? files.pub);
  if (!fs.existsSync(cfg.path)) throw new JournalError(`journal ${cfg.path} does not exist`);
  try {
    return withStore(cfg, true, (db) => verifyJournal(db, pub, { headFile: files.head }));
  } catch (err) {
    // the file is there but SQLite cannot read it: that is an alteration too (exit 1, not 2)
    const problem = { kind: 'corrupt' as const, message: `journal unreadable: ${(err as Error).message}` };
    return {
      ok: false, journalId: null, events: 0, blocks: 0, records: 0, purgedBlocks: 0, purgedRecords: 0, openRecords: 0,
      purgeHorizonMs: null, problems: [problem], first: problem,
    };
  }
}

export function journalVerifyExport(dir: string, pubFile: string): ExportCheck {
  return verifyExport(dir, loadPublicKey(pubFile));
}

export function journalPurge(cfg: JournalConfig, opts: { retentionDays?: number; nowMs?: number; chunkRows?: number } = {}): Promise<PurgeResult> {
  const operator = checkOperator(cfg.path, cfg.operatorGroup);
  const signer = requireSigner(cfg, 'purge');
  const db = openStore(cfg.path, { group: cfg.operatorGroup });
  const journalId = getMeta(db, 'journal_id');
  if (journalId === null) {
    db.close();
    return Promise.reject(new JournalError(`journal ${cfg.path} was never started (no journal id)`));
  }
  return runPurge(db, journalId, signer, {
    retentionDays: opts.retentionDays ?? cfg.retentionDays, nowMs: opts.nowMs ?? Date.now(),
    chunkRows: opts.chunkRows ?? DEFAULT_CHUNK_ROWS, operator,
  }).finally(() => db.close());
}

export function journalHold(cfg: JournalConfig, requisition: string, c: Criteria): Hold {
  const operator = checkOperator(cfg.path, cfg.operatorGroup);
  const signer = requireSigner(cfg, 'hold');
  return withStore(cfg, false, (db, journalId) => placeHold(db, journalId, signer, requisition, c, operator));
}

export function journalRelease(cfg: JournalConfig, requisition: string): Hold[] {
  const operator = checkOperator(cfg.path, cfg.operatorGroup);
  const signer = requireSigner(cfg, 'release');
  return withStore(cfg, false, (db, journalId) => releaseHolds(db, journalId, signer, requisition, operator));
}

export function journalHolds(cfg: JournalConfig): Hold[] {
  checkOperator(cfg.path, cfg.operatorGroup);
  return withStore(cfg, true, (db) => listHolds(db));
}

export function journalAudit(cfg: JournalConfig, pubFile: string | null): AuditCheck[] {
  checkOperator(cfg.path, cfg.operatorGroup);
  const files = journalFiles(cfg.path, cfg.keyFile);
  let pub = null;
  try {
    pub = loadPublicKey(pubFile ?? files.pub);
  } catch (err) {
    if (pubFile !== null) throw err;
  }
  const journalId = withStore(cfg, true, (_db, id) => id);
  let adb: Database.Database;
  try {
    adb = openAudit(files.audit, cfg.operatorGroup, true);
  } catch {
    return []; // no consultation yet
  }
  try {
    return readAudit(adb, journalId, pub);
  } finally {
    adb.close();
  }
}

export function parseBasis(s: string): LegalBasis {
  if (s === '60-1' || s === '77-1-1' || s === '99-3') return s;
  throw new InputError(`--basis: expected 60-1, 77-1-1 or 99-3 (Code de procédure pénale article), got "${s}"`);
}
