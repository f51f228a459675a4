/**
 * The journal store: one SQLite file (WAL), its schema, file names and modes.
 *
 * Layout (schema version 2):
 *   meta(key, value)            journal_id (random, names the chain), schema_version, created_ms,
 *                               max_duration_ms (longest finished connection, bounds the
 *                               "egress port at time T" search backwards)
 *   records(id INTEGER PRIMARY KEY, day, blk, ...fields of record.ts)
 *       Only the primary key: the append path pays for no secondary index (each one cost a
 *       random page write per record per commit: ~18 us of the ~24 us a record took in
 *       version 1). The requisition indexes live in a second file, NAME.index.db, built in
 *       bulk by the indexer thread (index-db.ts); queries read the records it has not reached
 *       yet by id range. ids grow with time, so that unindexed tail is the last seconds.
 *       day = floor(start_ms / 86 400 000), the UTC day: the index keys start with it, so a
 *       requisition seeks one slice per day of its window. blk = seq of the block that seals
 *       the row (NULL while open).
 *   blocks(seq, ...)            signed chain of sealed records (chain.ts has the layout)
 *   events(seq, ...)            signed chain of the journal's own events: start, recovery,
 *                               purge, hold, release (chain.ts)
 *   holds(id, ...)              preservation orders: records matching them survive purges
 *
 * Files beside journal.path = DIR/NAME.db: DIR/NAME.key (Ed25519 private, 0600),
 * DIR/NAME.pub (public, 0644), DIR/NAME.audit.db (requisition audit trail, 0660),
 * DIR/NAME.head (last sealed block, a witness against truncation), DIR/NAME.index.db (the
 * requisition indexes, derived data: deleting it only costs a rebuild). The journal and its
 * index are 0640.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { GardefouError, errorMessage } from '../errors';

export const SCHEMA_VERSION = 2;
/** Version 1 kept five secondary indexes in `records`; opening it for writing drops them. */
const V1_INDEXES = ['rec_client', 'rec_user', 'rec_ws', 'rec_host', 'rec_egress'];

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
  id INTEGER PRIMARY KEY,
  day INTEGER NOT NULL,
  blk INTEGER,
  ref TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  end_ms INTEGER,
  client_ip TEXT NOT NULL,
  client_port INTEGER NOT NULL,
  user TEXT,
  workstation TEXT,
  egress_ip TEXT,
  egress_port INTEGER,
  dest_host TEXT NOT NULL,
  dest_ip TEXT,
  dest_port INTEGER NOT NULL,
  protocol TEXT NOT NULL,
  method TEXT NOT NULL,
  decision TEXT NOT NULL,
  reason TEXT NOT NULL,
  profile TEXT,
  category TEXT,
  list_serial TEXT,
  status INTEGER,
  bytes_in INTEGER NOT NULL DEFAULT 0,
  bytes_out INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS blocks (
  seq INTEGER PRIMARY KEY,
  sealed_ms INTEGER NOT NULL,
  count INTEGER NOT NULL,
  min_id INTEGER NOT NULL,
  max_id INTEGER NOT NULL,
  min_start_ms INTEGER NOT NULL,
  max_start_ms INTEGER NOT NULL,
  low_open_id INTEGER NOT NULL,
  ids BLOB,
  leaves BLOB,
  ids_hash BLOB NOT NULL,
  leaves_hash BLOB NOT NULL,
  prev BLOB NOT NULL,
  hash BLOB NOT NULL,
  sig BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_max_start ON blocks(max_start_ms);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY,
  time_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  prev BLOB NOT NULL,
  hash BLOB NOT NULL,
  sig BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
  id INTEGER PRIMARY KEY,
  requisition TEXT NOT NULL,
  from_ms INTEGER NOT NULL,
  to_ms INTEGER NOT NULL,
  criteria TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  created_by TEXT NOT NULL,
  released_ms INTEGER,
  released_by TEXT
);
`;

export interface JournalFiles {
  db: string;
  key: string;
  pub: string;
  audit: string;
  head: string;
  index: string;
}

/** File names derived from journal.path and journal.keyFile (see the layout above). */
export function journalFiles(dbPath: string, keyFile: string | null): JournalFiles {
  const dir = path.dirname(dbPath);
  const base = path.basename(dbPath).replace(/\.(db|sqlite3?)$/i, '');
  const key = keyFile ?? path.join(dir, `${base}.key`);
  const pub = key.endsWith('.key') ? `${key.slice(0, -4)}.pub` : `${key}.pub`;
  return { db: dbPath, key, pub, audit: path.join(dir, `${base}.audit.db`), head: path.join(dir, `${base}.head`), index: path.join(dir, `${base}.index.db`) };
}

export class JournalError extends GardefouError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GARDEFOU_JOURNAL', message, options);
    this.name = 'JournalError';
  }
}

/** Looks a group up in /etc/group (node has no getgrnam). */
export function lookupGroup(name: string): { gid: number; members: string[] } | null {
  let text: string;
  try {
    text = fs.readFileSync('/etc/group', 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f[2] !== undefined) {
      return { gid: Number(f[2]), members: (f[3] ?? '').split(',').filter((m) => m !== '') };
    }
  }
  return null;
}

/**
 * Creates `file` empty with `mode` if missing (so SQLite, which copies the database file's mode
 * to its -wal and -shm files, never widens it), and gives it to `group` when configured.
 */
export function ensureFile(file: string, mode: number, group: string | null): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
  try {
    fs.closeSync(fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, mode));
    fs.chmodSync(file, mode); // the umask may have narrowed it further
    if (group !== null) {
      const g = lookupGroup(group);
      if (g && process.getuid?.() === 0) fs.chownSync(file, fs.statSync(file).uid, g.gid);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

export interface OpenOptions {
  readonly?: boolean;
  group?: string | null;
}

/** Opens (creating when writable) a journal database with the pragmas the writer relies on. */
export function openStore(file: string, opts: OpenOptions = {}): Database.Database {
  let db: Database.Database;
  try {
    if (opts.readonly) {
      db = new Database(file, { readonly: true, fileMustExist: true });
    } else {
      ensureFile(file, 0o640, opts.group ?? null);
      db = new Database(file);
    }
  } catch (err) {
    throw new JournalError(`opening journal ${file}: ${errorMessage(err)}`, { cause: err });
  }
  try {
    db.pragma('busy_timeout = 5000');
    if (!opts.readonly) {
      db.pragma('journal_mode = WAL');
      // FULL: each commit is fsynced, so a record whose begin() resolved survives a power cut,
      // not only a kill -9. Commits run in the writer thread, never on the event loop.
      db.pragma('synchronous = FULL');
      // 8 MiB: the writer appends (the right edge of `records` is all it touches; the indexes
      // are in another file), and this cache is resident memory of the gateway at its peak
      db.pragma('cache_size = -8192');
      db.pragma('temp_store = MEMORY');
      db.pragma('journal_size_limit = 67108864'); // the WAL shrinks back to 64 MiB after a burst
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version !== 0 && version !== 1 && version !== SCHEMA_VERSION) {
        throw new JournalError(`opening journal ${file}: schema version: expected ${SCHEMA_VERSION}, got ${version}`);
      }
      db.exec(SCHEMA);
      if (version === 1) {
        // the indexes move to NAME.index.db, which the indexer thread builds from the records
        db.transaction(() => {
          for (const ix of V1_INDEXES) db.exec(`DROP INDEX IF EXISTS ${ix}`);
        })();
      }
      if (version !== SCHEMA_VERSION) db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } else {
      db.pragma('cache_size = -65536');
      // reads (queries, exports, verify) through a memory map: no read() call and no copy per
      // page. Not on the writer: an I/O error on a mapped page is a SIGBUS that would kill the
      // proxy instead of turning the journal unhealthy (fail-closed 503).
      db.pragma('mmap_size = 1073741824');
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version !== SCHEMA_VERSION && version !== 1) {
        throw new JournalError(`opening journal ${file}: schema version: expected ${SCHEMA_VERSION}, got ${version} (not a gardefou journal?)`);
      }
    }
  } catch (err) {
    db.close();
    if (err instanceof JournalError) throw err;
    throw new JournalError(`opening journal ${file}: ${errorMessage(err)}`, { cause: err });
  }
  return db;
}

export function getMeta(db: Database.Database, key: string): string | null {
  const r = db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
  return r ? r.value : null;
}

export function setMeta(db: Database.Database, key: string, value: string): void {
  db.prepare('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
}
