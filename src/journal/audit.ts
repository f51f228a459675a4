/**
 * The requisition audit trail: who consulted the journal, for which requisition, on which
 * legal basis, with which criteria, and how many records they saw. Appended BEFORE any record
 * is shown or written out; if it cannot be appended, nothing is shown.
 *
 * Separate file (NAME.audit.db, 0660, group = journal.operatorGroup) so operators can append
 * to it. Layout, table `audit` (append-only, a hash chain):
 *   hash = SHA-256("gardefou/audit/v1\n" || prev || seq (int64 BE) || body)
 *   body = JSON {time_ms, operator, action, requisition, authority, basis, criteria, rows, detail}
 *   prev = hash of entry seq-1; for the first SHA-256("gardefou/audit\n" + journal_id)
 *   sig  = Ed25519(journal key, hash) when the appender can read the key (root or the service
 *          user), else NULL: such entries are chained but unsigned, and listed so.
 */
import type { KeyObject } from 'node:crypto';
import Database from 'better-sqlite3';
import { errorMessage } from '../errors';
import { verifySig, type Signer } from './keys';
import { sha256, u64 } from './record';
import { JournalError, ensureFile } from './store';

export interface AuditBody {
  time_ms: number;
  operator: string;
  action: 'query' | 'export';
  requisition: string;
  authority: string;
  basis: string;
  criteria: Record<string, string | number>;
  rows: number;
  detail: Record<string, string | number>;
}

export interface AuditEntry {
  seq: number;
  body: string;
  prev: Buffer;
  hash: Buffer;
  sig: Buffer | null;
}

const SCHEMA = `CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, body TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL, sig BLOB);
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID`;

/** Called by the service at start: creates the trail and its -journal file with their modes. */
export function prepareAudit(file: string, group: string | null): void {
  const db = openAudit(file, group);
  try {
    db.prepare(`INSERT INTO audit_meta(key, value) VALUES ('prepared_ms', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`).run(String(Date.now()));
  } finally {
    db.close();
  }
}

export function auditHash(prev: Buffer, seq: number, body: string): Buffer {
  return sha256('gardefou/audit/v1\n', prev, u64(seq), body);
}

export function auditGenesis(journalId: string): Buffer {
  return sha256(`gardefou/audit\n${journalId}`);
}

export function openAudit(file: string, group: string | null, readonly = false): Database.Database {
  try {
    if (!readonly) ensureFile(file, 0o660, group);
    const db = new Database(file, readonly ? { readonly: true, fileMustExist: true } : {});
    db.pragma('busy_timeout = 5000');
    if (!readonly) {
      // PERSIST, not WAL: the -journal file, once created by the service, is reused, so an
      // operator who may write this file but not its directory can still append.
      db.pragma('journal_mode = PERSIST');
      db.pragma('synchronous = FULL');
      db.exec(SCHEMA);
    }
    return db;
  } catch (err) {
    throw new JournalError(`opening the audit trail ${file}: ${errorMessage(err)}`, { cause: err });
  }
}

export function appendAudit(db: Database.Database, journalId: string, signer: Signer | null, b: AuditBody): AuditEntry {
  try {
    return db.transaction(() => {
      const last = db.prepare('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: Buffer } | undefined;
      const seq = last ? last.seq + 1 : 1;
      const prev = last ? last.hash : auditGenesis(journalId);
      const body = JSON.stringify(b);
      const hash = auditHash(prev, seq, body);
      const e: AuditEntry = { seq, body, prev, hash, sig: signer ? signer.sign(hash) : null };
      db.prepare('INSERT INTO audit (seq, body, prev, hash, sig) VALUES (@seq, @body, @prev, @hash, @sig)').run(e);
      return e;
    }).immediate();
  } catch (err) {
    throw new JournalError(`appending to the audit trail (nothing was shown): ${errorMessage(err)}`, { cause: err });
  }
}

export interface AuditCheck {
  seq: number;
  body: AuditBody;
  signed: boolean;
  problem: string | null;
}

/** Lists the trail and checks its chain (and signatures where present). */
export function readAudit(db: Database.Database, journalId: string, pub: KeyObject | null): AuditCheck[] {
  const out: AuditCheck[] = [];
  let prev = auditGenesis(journalId);
  let expect = 1;
  for (const e of db.prepare('SELECT * FROM audit ORDER BY seq').iterate() as IterableIterator<AuditEntry>) {
    let problem: string | null = null;
    if (e.seq !== expect) problem = `expected entry ${expect} (entries deleted or inserted)`;
    else if (!e.prev.equals(prev)) problem = 'link to the previous entry broken';
    else if (!auditHash(e.prev, e.seq, e.body).equals(e.hash)) problem = 'entry altered';
    else if (e.sig && pub && !verifySig(pub, e.hash, e.sig)) problem = 'bad signature';
    let body: AuditBody;
    try {
      body = JSON.parse(e.body) as AuditBody;
    } catch {
      body = { time_ms: 0, operator: '?', action: 'query', requisition: '?', authority: '?', basis: '?', criteria: {}, rows: 0, detail: {} };
      problem ??= 'unreadable entry';
    }
    out.push({ seq: e.seq, body, signed: e.sig !== null, problem });
    prev = e.hash;
    expect = e.seq + 1;
  }
  return out;
}
