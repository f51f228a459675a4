/**
 * The requisition indexes: a second SQLite file beside the journal (NAME.index.db), derived
 * from `records` and rebuilt from it when missing, damaged or belonging to another journal.
 *
 * Layout (index schema version 1):
 *   meta(key, value)                          journal_id (must equal the journal's), watermark W:
 *                                             every record with id <= W has its entries, except
 *                                             the egress entry of rows still open when indexed
 *   pending(id)                               those rows (id <= W, not final when indexed)
 *   ix_client(day, client_ip, start_ms, id)   WITHOUT ROWID, the key is the whole row
 *   ix_user(day, user, start_ms, id)          rows with a user
 *   ix_ws(day, workstation, start_ms, id)     rows with a workstation
 *   ix_host(day, dest_host, start_ms, id)
 *   ix_egress(day, egress_port, start_ms, id) final rows (sealed: blk set) with an egress port
 *
 * Why a separate file, built in bulk: kept in `records`, five indexes cost one random page
 * write each per record per commit (the append path's commits are small and frequent). Here
 * the indexer thread adds thousands of records per transaction, sorted by key, so each index
 * page is written once per step for many entries, on the other core, and without ever taking
 * the journal's write lock (it only reads `records`, attached).
 *
 * Why lagging is safe: a query reads the index for ids <= W, `records` by rowid for ids > W
 * (the last seconds, when the indexer keeps up), and the pending rows; results are joined to
 * `records` by id, so an entry whose record was purged is never returned. Entries of days older
 * than the oldest record are dropped by purgeIndex().
 */
import * as fs from 'node:fs';
import type Database from 'better-sqlite3';
import DatabaseCtor from 'better-sqlite3';
import { errorMessage } from '../errors';
import { JournalError, ensureFile } from './store';

export const INDEX_VERSION = 1;

const INDEX_SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS ix_client (day INTEGER NOT NULL, client_ip TEXT NOT NULL, start_ms INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (day, client_ip, start_ms, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_user (day INTEGER NOT NULL, user TEXT NOT NULL, start_ms INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (day, user, start_ms, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_ws (day INTEGER NOT NULL, workstation TEXT NOT NULL, start_ms INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (day, workstation, start_ms, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_host (day INTEGER NOT NULL, dest_host TEXT NOT NULL, start_ms INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (day, dest_host, start_ms, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_egress (day INTEGER NOT NULL, egress_port INTEGER NOT NULL, start_ms INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (day, egress_port, start_ms, id)) WITHOUT ROWID;
`;

/** The index tables, by the criterion they serve, with their key column. */
export const INDEXES = {
  client: { table: 'ix_client', column: 'client_ip' },
  user: { table: 'ix_user', column: 'user' },
  workstation: { table: 'ix_ws', column: 'workstation' },
  host: { table: 'ix_host', column: 'dest_host' },
  egressPort: { table: 'ix_egress', column: 'egress_port' },
} as const;
export type IndexKind = keyof typeof INDEXES;

/** Attached name of the journal inside the indexer's connection, and of the index inside a reader's. */
const JOURNAL_ALIAS = 'j';
export const INDEX_ALIAS = 'ix';

export interface StepResult {
  /** records newly covered */
  indexed: number;
  /** pending rows that became final */
  settled: number;
  watermark: number;
  /** true when the index reached the last committed record */
  caughtUp: boolean;
  ms: number;
}

function sqlQuote(file: string): string {
  return `'${file.replace(/'/g, "''")}'`;
}

/**
 * The writing side, used by the indexer thread only. Opens (creating) the index file, drops
 * it when it belongs to another journal or another index version, and attaches the journal.
 */
export class IndexWriter {
  readonly db: Database.Database;
  private readonly stepStmts: Database.Statement[];
  private readonly pendingStmts: Database.Statement[];
  private readonly topStmt: Database.Statement;
  private readonly setWatermark: Database.Statement;
  watermark: number;

  constructor(readonly indexFile: string, journalFile: string, readonly journalId: string, group: string | null) {
    this.db = openIndexFile(indexFile, journalId, group);
    try {
      this.db.exec(`ATTACH DATABASE ${sqlQuote(journalFile)} AS ${JOURNAL_ALIAS}`);
    } catch (err) {
      this.db.close();
      throw new JournalError(`index ${indexFile}: attaching ${journalFile}: ${errorMessage(err)}`, { cause: err });
    }
    const range = `FROM ${JOURNAL_ALIAS}.records WHERE id > ? AND id <= ?`;
    this.stepStmts = [
      this.db.prepare(`INSERT OR IGNORE INTO ix_client SELECT day, client_ip, start_ms, id ${range} ORDER BY 1, 2, 3, 4`),
      this.db.prepare(`INSERT OR IGNORE INTO ix_user SELECT day, user, start_ms, id ${range} AND user IS NOT NULL ORDER BY 1, 2, 3, 4`),
      this.db.prepare(`INSERT OR IGNORE INTO ix_ws SELECT day, workstation, start_ms, id ${range} AND workstation IS NOT NULL ORDER BY 1, 2, 3, 4`),
      this.db.prepare(`INSERT OR IGNORE INTO ix_host SELECT day, dest_host, start_ms, id ${range} ORDER BY 1, 2, 3, 4`),
      this.db.prepare(`INSERT OR IGNORE INTO ix_egress SELECT day, egress_port, start_ms, id ${range} AND blk IS NOT NULL AND egress_port IS NOT NULL ORDER BY 1, 2, 3, 4`),
      this.db.prepare(`INSERT OR IGNORE INTO pending SELECT id ${range} AND blk IS NULL`),
    ];
    this.pendingStmts = [
      // pending rows that are final now (finished, or sealed as they were after a crash)
      // (CROSS JOIN: the short pending list outside; SQLite would otherwise scan the records)
      this.db.prepare(`INSERT OR IGNORE INTO ix_egress SELECT r.day, r.egress_port, r.start_ms, r.id FROM pending p
        CROSS JOIN ${JOURNAL_ALIAS}.records r ON r.id = p.id WHERE r.blk IS NOT NULL AND r.egress_port IS NOT NULL`),
      this.db.prepare(`DELETE FROM pending WHERE id NOT IN (SELECT p.id FROM pending p CROSS JOIN ${JOURNAL_ALIAS}.records r ON r.id = p.id WHERE r.blk IS NULL)`),
    ];
    this.topStmt = this.db.prepare(`SELECT max(id) AS m FROM ${JOURNAL_ALIAS}.records`);
    this.setWatermark = this.db.prepare(`INSERT INTO meta(key, value) VALUES ('watermark', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`);
    const w = this.db.prepare(`SELECT value FROM meta WHERE key = 'watermark'`).get() as { value: string } | undefined;
    this.watermark = w ? Number(w.value) : 0;
  }

  /** Indexes up to `maxRows` more records (one transaction) and settles pending rows. */
  step(maxRows: number): StepResult {
    const t0 = performance.now();
    let indexed = 0;
    let settled = 0;
    let caughtUp = false;
    const from = this.watermark;
    let to = from;
    this.db.transaction(() => {
      const top = (this.topStmt.get() as { m: number | null }).m ?? 0;
      to = Math.max(from, Math.min(top, from + maxRows));
      caughtUp = to === top || top <= from;
      if (to > from) {
        for (const st of this.stepStmts) st.run(from, to);
        this.setWatermark.run(String(to));
      }
      settled = this.pendingStmts[0]!.run().changes;
      this.pendingStmts[1]!.run();
    })(); // deferred, never IMMEDIATE: that would take the write lock of the attached journal too
    this.watermark = to;
    indexed = to - from;
    return { indexed, settled, watermark: to, caughtUp, ms: performance.now() - t0 };
  }

  /**
   * Drops the entries of days older than the oldest record left (the purge removed them;
   * held records keep their day, and the join in queries skips any other stale entry).
   * Returns the entries deleted.
   */
  purge(): number {
    const first = this.db.prepare(`SELECT day FROM ${JOURNAL_ALIAS}.records ORDER BY id LIMIT 1`).get() as { day: number } | undefined;
    let n = 0;
    this.db.transaction(() => {
      for (const { table } of Object.values(INDEXES)) {
        n += first
          ? this.db.prepare(`DELETE FROM ${table} WHERE day < ?`).run(first.day).changes
          : this.db.prepare(`DELETE FROM ${table} WHERE id <= ?`).run(this.watermark).changes;
      }
    })();
    return n;
  }

  /** Back to a rollback journal (readable by operators who cannot create -shm), then close. */
  close(): void {
    try {
      this.db.exec(`DETACH DATABASE ${JOURNAL_ALIAS}`);
      this.db.pragma('journal_mode = DELETE');
    } catch {
      // a reader holds it: it stays in WAL mode
    }
    try {
      this.db.close();
    } catch {
      // already gone
    }
  }
}

/** Opens the index file for writing; starts it afresh when it is not this journal's. */
function openIndexFile(file: string, journalId: string, group: string | null): Database.Database {
  const open = (): Database.Database => {
    ensureFile(file, 0o640, group);
    const db = new DatabaseCtor(file);
    db.pragma('busy_timeout = 5000');
    db.pragma('journal_mode = WAL');
    // derived data: a power cut may lose the last steps (the watermark goes back with them)
    db.pragma('synchronous = NORMAL');
    // 16 MiB: today's slice of the five indexes, written in sorted runs; pages that fall out
    // are read back from the OS page cache, and this cache counts in the gateway's RSS
    db.pragma('cache_size = -16384');
    return db;
  };
  let db: Database.Database;
  try {
    db = open();
    const version = db.pragma('user_version', { simple: true }) as number;
    const owner = version === INDEX_VERSION ? readMeta(db, 'journal_id') : null;
    if (version !== 0 && (version !== INDEX_VERSION || owner !== journalId)) {
      // another journal's index, an old layout, or garbage: rebuilt from the records
      db.close();
      for (const suffix of ['', '-wal', '-shm']) fs.rmSync(`${file}${suffix}`, { force: true });
      db = open();
    }
  } catch (err) {
    // not a database at all (damaged): start it again
    for (const suffix of ['', '-wal', '-shm']) fs.rmSync(`${file}${suffix}`, { force: true });
    try {
      db = open();
    } catch (err2) {
      throw new JournalError(`opening index ${file}: ${errorMessage(err2)} (after: ${errorMessage(err)})`, { cause: err2 });
    }
  }
  db.exec(INDEX_SCHEMA);
  if ((db.pragma('user_version', { simple: true }) as number) === 0) {
    db.prepare(`INSERT OR REPLACE INTO meta(key, value) VALUES ('journal_id', ?)`).run(journalId);
    db.pragma(`user_version = ${INDEX_VERSION}`);
  }
  return db;
}

function readMeta(db: Database.Database, key: string): string | null {
  try {
    const r = db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return r ? r.value : null;
  } catch {
    return null;
  }
}

/** What a reader learnt from the attached index. */
export interface AttachedIndex {
  watermark: number;
}

/**
 * Attaches the index to a journal connection (readers: query, export) as `ix` when it exists
 * and belongs to `journalId`; returns null otherwise (queries then read `records` alone).
 */
export function attachIndex(db: Database.Database, indexFile: string, journalId: string): AttachedIndex | null {
  if (!fs.existsSync(indexFile)) return null;
  try {
    db.exec(`ATTACH DATABASE ${sqlQuote(indexFile)} AS ${INDEX_ALIAS}`);
  } catch {
    return null; // unreadable: the records alone still answer, only slower
  }
  try {
    const version = db.pragma(`${INDEX_ALIAS}.user_version`, { simple: true }) as number;
    const meta = (k: string) => (db.prepare(`SELECT value FROM ${INDEX_ALIAS}.meta WHERE key = ?`).get(k) as { value: string } | undefined)?.value;
    if (version !== INDEX_VERSION || meta('journal_id') !== journalId) throw new Error('not this journal');
    return { watermark: Number(meta('watermark') ?? '0') };
  } catch {
    try {
      db.exec(`DETACH DATABASE ${INDEX_ALIAS}`);
    } catch {
      // nothing attached
    }
    return null;
  }
}
