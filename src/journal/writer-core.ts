/**
 * The writing side of the journal, single-threaded and synchronous: it runs inside the writer
 * worker thread (writer-worker.ts), so the proxy's event loop never waits on SQLite or fsync.
 *
 * Life of a record:
 *   begin     -> INSERT (committed with its batch; the proxy forwards only after that)
 *   connected -> in-memory update, written with the next batch (one UPDATE per row per batch)
 *   finish    -> UPDATE with blk = the block that will seal it; its leaf joins the unsealed list
 *   seal      -> every SEAL_MS (or BLOCK_MAX records, or at close) the unsealed records become a
 *                signed block, in the same transaction as the batch that finished the last ones.
 * A crash leaves open rows (blk NULL) and finished-unsealed rows (blk > last block): the next
 * open seals them as they are (recover()).
 */
import * as fs from 'node:fs';
import type Database from 'better-sqlite3';
import { errorMessage } from '../errors';
import { prepareAudit } from './audit';
import { BLOCK_MAX, appendEvent, buildBlock, insertBlock, lastBlock, writeHead, type SealEntry } from './chain';
import { loadOrCreateKey, type Signer } from './keys';
import { dayOf, leafOf, type RecordRow } from './record';
import { JournalError, getMeta, journalFiles, openStore, setMeta, type JournalFiles } from './store';
import type { JournalClose, JournalDecision, JournalOpen, JournalProtocol } from './types';

export const SEAL_MS = 1000;

/**
 * Operations sent by the proxy side, in order, as flat tuples: a batch crosses the thread
 * boundary as one JSON string, and positional arrays parse in about half the time of objects
 * with named fields (and leave less garbage) on the writer's hot path.
 *   [0, id, ref, startMs, clientIp, clientPort, user, workstation, protocol, method,
 *    destHost, destPort, decision, reason, profile, category, listSerial]        begin
 *   [1, id, destIp, egressIp, egressPort]                                        connected
 *   [2, id, endMs, destIp, egressIp, egressPort, status, bytesIn, bytesOut,
 *    decision | null, reason | null]                                            finish
 */
export type BeginOp = [0, number, string, number, string, number, string | null, string | null, JournalProtocol, string,
  string, number, JournalDecision, string, string | null, string | null, string | null];
export type ConnectedOp = [1, number, string | null, string | null, number | null];
export type FinishOp = [2, number, number, string | null, string | null, number | null, number | null, number, number, JournalDecision | null, string | null];
export type Op = BeginOp | ConnectedOp | FinishOp;

export function beginOp(id: number, o: JournalOpen): BeginOp {
  return [0, id, o.ref, Math.trunc(o.startMs), o.clientIp, o.clientPort, o.user ?? null, o.workstation ?? null, o.protocol, o.method,
    o.destHost, o.destPort, o.decision, o.reason, o.profile ?? null, o.category ?? null, o.listSerial ?? null];
}

export function finishOp(id: number, c: JournalClose): FinishOp {
  return [2, id, Math.trunc(c.endMs), c.destIp, c.egressIp, c.egressPort, c.status, Math.trunc(c.bytesIn), Math.trunc(c.bytesOut),
    c.decision ?? null, c.reason ?? null];
}

export interface CoreOptions {
  path: string;
  keyFile: string | null;
  operatorGroup: string | null;
  failOpen: boolean;
}

export interface CommitResult {
  /** begin ops settled by this commit (in order) */
  begins: number;
  ok: boolean;
  error?: string;
  ms: number;
  sealed: number;
}

interface Row extends RecordRow {
  blk: number | null;
}

export class WriterCore {
  readonly files: JournalFiles;
  db: Database.Database;
  readonly signer: Signer;
  readonly journalId: string;
  readonly keyCreated: boolean;
  nextId: number;
  recovered = 0;
  healthy = true;
  lastError: string | null = null;
  recordsWritten = 0;
  blocksSealed = 0;

  private ino: number;
  private dev: number;
  /** begun and not finished, in id order (Map keeps insertion order) */
  private readonly open = new Map<number, Row>();
  private inserts: Row[] = [];
  private beginsInBatch = 0;
  private dirty = new Set<number>();
  /** finished in the current (uncommitted) batch */
  private finishedRows = new Map<number, Row>();
  /** committed, not sealed yet */
  private unsealed: SealEntry[] = [];
  unsealedSince = 0;
  private lastBlk: { seq: number; hash: Buffer } | undefined;
  private maxDurationMs: number;
  private maxDurationDirty = false;
  private readonly insertStmt: Database.Statement;
  private readonly updateStmt: Database.Statement;
  private readonly probeStmt: Database.Statement;

  constructor(readonly opts: CoreOptions) {
    this.files = journalFiles(opts.path, opts.keyFile);
    const { signer, created } = loadOrCreateKey(this.files.key, this.files.pub);
    this.signer = signer;
    this.keyCreated = created;
    this.db = openStore(this.files.db, { group: opts.operatorGroup });
    prepareAudit(this.files.audit, opts.operatorGroup);
    let id = getMeta(this.db, 'journal_id');
    if (id === null) {
      id = `${Date.now().toString(36)}-${require('node:crypto').randomBytes(8).toString('hex') as string}`;
      setMeta(this.db, 'journal_id', id);
      setMeta(this.db, 'created_ms', String(Date.now()));
      setMeta(this.db, 'key_fingerprint', signer.fingerprint);
    } else {
      const fp = getMeta(this.db, 'key_fingerprint');
      if (fp !== null && fp !== signer.fingerprint) {
        this.db.close();
        throw new JournalError(`journal ${this.files.db} was sealed with key ${fp.slice(0, 16)}..., but ${this.files.key} is ${signer.fingerprint.slice(0, 16)}...`);
      }
    }
    this.journalId = id;
    this.maxDurationMs = Number(getMeta(this.db, 'max_duration_ms') ?? '0');
    const st = fs.statSync(this.files.db);
    this.ino = st.ino;
    this.dev = st.dev;
    // positional parameters: binding 25 named values from an object costs more than the insert
    this.insertStmt = this.db.prepare(`INSERT INTO records (id, day, blk, ref, start_ms, end_ms, client_ip, client_port,
      user, workstation, egress_ip, egress_port, dest_host, dest_ip, dest_port, protocol, method, decision, reason,
      profile, category, list_serial, status, bytes_in, bytes_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    this.updateStmt = this.db.prepare(`UPDATE records SET blk = ?, end_ms = ?, dest_ip = ?, egress_ip = ?, egress_port = ?,
      status = ?, bytes_in = ?, bytes_out = ?, decision = ?, reason = ? WHERE id = ?`);
    this.probeStmt = this.db.prepare(`INSERT INTO meta(key, value) VALUES ('alive_ms', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`);
    this.lastBlk = lastBlock(this.db);
    this.recovered = this.recover();
    const maxIds = this.db.prepare('SELECT (SELECT max(id) FROM records) AS r, (SELECT max(max_id) FROM blocks) AS b').get() as { r: number | null; b: number | null };
    this.nextId = Math.max(maxIds.r ?? 0, maxIds.b ?? 0) + 1;
    this.db.transaction(() => {
      appendEvent(this.db, this.journalId, this.signer, 'start', {
        pid: process.pid, failOpen: opts.failOpen, key: signer.fingerprint, recovered: this.recovered, keyCreated: created,
      });
    }).immediate();
  }

  /** Seals, as they are, rows left open or unsealed by a crash. Returns how many. */
  private recover(): number {
    const lb = this.lastBlk ? (this.db.prepare('SELECT seq, low_open_id FROM blocks WHERE seq = ?').get(this.lastBlk.seq) as { seq: number; low_open_id: number }) : undefined;
    const low = lb ? lb.low_open_id : 0;
    const lastSeq = lb ? lb.seq : 0;
    const rows = this.db.prepare(`SELECT * FROM records WHERE id >= ? AND (blk IS NULL OR blk > ?) ORDER BY id`).all(low, lastSeq) as Row[];
    if (rows.length === 0) return 0;
    const seq = lastSeq + 1;
    const unfinished = rows.filter((r) => r.end_ms === null).length;
    this.db.transaction(() => {
      const setBlk = this.db.prepare('UPDATE records SET blk = ? WHERE id = ?');
      for (let i = 0; i < rows.length; i += BLOCK_MAX) {
        const part = rows.slice(i, i + BLOCK_MAX);
        const s = (this.lastBlk?.seq ?? 0) + 1;
        for (const r of part) setBlk.run(s, r.id);
        const maxId = rows[rows.length - 1]!.id;
        const b = buildBlock(this.journalId, this.lastBlk, part.map((r) => ({ id: r.id, leaf: leafOf(r), start: r.start_ms })), maxId + 1, Date.now(), this.signer);
        insertBlock(this.db, b);
        this.lastBlk = { seq: b.seq, hash: b.hash };
      }
      appendEvent(this.db, this.journalId, this.signer, 'recovery', { sealed: rows.length, unfinished, firstBlock: seq, lastBlock: this.lastBlk?.seq ?? seq });
    }).immediate();
    this.writeHeadSafe();
    return rows.length;
  }

  apply(op: Op): void {
    const id = op[1];
    if (op[0] === 0) {
      const row: Row = {
        id, blk: null, ref: op[2], start_ms: op[3], end_ms: null, client_ip: op[4], client_port: op[5], user: op[6], workstation: op[7],
        egress_ip: null, egress_port: null, dest_host: op[10], dest_ip: null, dest_port: op[11], protocol: op[8], method: op[9],
        decision: op[12], reason: op[13], profile: op[14], category: op[15], list_serial: op[16], status: null, bytes_in: 0, bytes_out: 0,
      };
      this.open.set(id, row);
      this.inserts.push(row);
      this.beginsInBatch++;
      return;
    }
    const row = this.open.get(id);
    if (!row) return; // its begin failed (already reported), or a second finish
    if (op[0] === 1) {
      if (op[2] !== null) row.dest_ip = op[2];
      if (op[3] !== null) row.egress_ip = op[3];
      if (op[4] !== null) row.egress_port = op[4];
    } else {
      row.end_ms = op[2];
      if (op[3] !== null) row.dest_ip = op[3];
      if (op[4] !== null) row.egress_ip = op[4];
      if (op[5] !== null) row.egress_port = op[5];
      row.status = op[6];
      row.bytes_in = op[7];
      row.bytes_out = op[8];
      if (op[9] !== null) row.decision = op[9];
      if (op[10] !== null) row.reason = op[10];
      this.open.delete(id);
      this.finishedRows.set(id, row);
      const d = (row.end_ms ?? row.start_ms) - row.start_ms;
      if (d > this.maxDurationMs) {
        this.maxDurationMs = d;
        this.maxDurationDirty = true;
      }
    }
    this.dirty.add(id);
  }

  get pending(): number {
    return this.inserts.length + this.dirty.size;
  }

  get unsealedCount(): number {
    return this.unsealed.length + this.finishedRows.size;
  }

  /** Whether a commit would do something now (a batch, or a seal that is due). */
  due(now: number, force = false): boolean {
    if (this.pending > 0) return true;
    if (this.unsealedCount === 0) return false;
    return force || this.unsealedCount >= BLOCK_MAX || this.sealAge(now) >= SEAL_MS;
  }

  /** How long the oldest committed, unsealed record has waited (0 when none has). */
  private sealAge(now: number): number {
    return this.unsealed.length > 0 ? now - this.unsealedSince : 0;
  }

  /**
   * Commits the batch (and seals a block when one is due, or when `forceSeal`). Never throws:
   * a failure marks the writer unhealthy, fails the batch's begins and keeps its updates.
   */
  commit(forceSeal = false, probe = false): CommitResult {
    const t0 = performance.now();
    const begins = this.beginsInBatch;
    const now = Date.now();
    const nUnsealed = this.unsealedCount;
    const seal = nUnsealed > 0 && (forceSeal || nUnsealed >= BLOCK_MAX || this.sealAge(now) >= SEAL_MS);
    const seq = (this.lastBlk?.seq ?? 0) + 1;
    let block: ReturnType<typeof buildBlock> | null = null;
    let newEntries: SealEntry[] = [];
    try {
      this.checkFile();
      for (const r of this.finishedRows.values()) {
        r.blk = seq;
        newEntries.push({ id: r.id, leaf: leafOf(r), start: r.start_ms });
      }
      if (seal) {
        const lowOpen = this.open.size > 0 ? (this.open.keys().next().value as number) : this.nextId;
        block = buildBlock(this.journalId, this.lastBlk, this.unsealed.concat(newEntries), lowOpen, now, this.signer);
      }
      this.db.transaction(() => {
        const ins = this.insertStmt;
        for (const r of this.inserts) {
          ins.run(r.id, dayOf(r.start_ms), r.blk, r.ref, r.start_ms, r.end_ms, r.client_ip, r.client_port, r.user, r.workstation,
            r.egress_ip, r.egress_port, r.dest_host, r.dest_ip, r.dest_port, r.protocol, r.method, r.decision, r.reason,
            r.profile, r.category, r.list_serial, r.status, r.bytes_in, r.bytes_out);
          this.dirty.delete(r.id);
        }
        const upd = this.updateStmt;
        for (const id of this.dirty) {
          const r = this.open.get(id) ?? this.finishedRows.get(id);
          if (r) upd.run(r.blk, r.end_ms, r.dest_ip, r.egress_ip, r.egress_port, r.status, r.bytes_in, r.bytes_out, r.decision, r.reason, r.id);
        }
        if (block) insertBlock(this.db, block);
        if (this.maxDurationDirty) setMeta(this.db, 'max_duration_ms', String(this.maxDurationMs));
        if (probe) this.probeStmt.run(String(now));
      })();
    } catch (err) {
      for (const r of this.finishedRows.values()) r.blk = null;
      return this.failed(err, begins, t0);
    }
    this.recordsWritten += this.inserts.length;
    this.inserts = [];
    this.beginsInBatch = 0;
    this.dirty.clear();
    this.maxDurationDirty = false;
    if (block) {
      this.unsealed = [];
      this.lastBlk = { seq: block.seq, hash: block.hash };
      this.blocksSealed++;
      this.writeHeadSafe();
    } else if (newEntries.length > 0) {
      if (this.unsealed.length === 0) this.unsealedSince = now;
      for (const e of newEntries) this.unsealed.push(e);
    }
    this.finishedRows.clear();
    if (!this.healthy) {
      this.healthy = true;
      this.lastError = null;
    }
    return { begins, ok: true, ms: performance.now() - t0, sealed: block ? block.count : 0 };
  }

  private failed(err: unknown, begins: number, t0: number): CommitResult {
    const msg = errorMessage(err);
    // begins of this batch are refused (the proxy does not forward them): forget their rows
    for (const r of this.inserts) {
      this.open.delete(r.id);
      this.dirty.delete(r.id);
    }
    for (const r of this.inserts) this.finishedRows.delete(r.id);
    this.inserts = [];
    this.beginsInBatch = 0;
    this.healthy = false;
    this.lastError = msg;
    return { begins, ok: false, error: msg, ms: performance.now() - t0, sealed: 0 };
  }

  /** A removed or replaced file still accepts writes through the open descriptor: refuse them. */
  private checkFile(): void {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.files.db);
    } catch (err) {
      throw new JournalError(`journal file ${this.files.db} is gone: ${errorMessage(err)}`);
    }
    if (st.ino !== this.ino || st.dev !== this.dev) throw new JournalError(`journal file ${this.files.db} was replaced`);
  }

  /** After a failure: reopen the file when it came back (same journal), then probe with a write. */
  retry(): CommitResult {
    try {
      const st = fs.statSync(this.files.db);
      if (st.ino !== this.ino || st.dev !== this.dev) {
        const db = openStore(this.files.db, { group: this.opts.operatorGroup });
        const id = getMeta(db, 'journal_id');
        if (id !== this.journalId) {
          db.close();
          throw new JournalError(`journal file ${this.files.db} is another journal (${id ?? 'new'}), not ${this.journalId}; restore it or restart the service`);
        }
        this.swapDb(db, st);
      }
    } catch (err) {
      this.lastError = errorMessage(err);
      return { begins: 0, ok: false, error: this.lastError, ms: 0, sealed: 0 };
    }
    return this.commit(false, true);
  }

  private swapDb(db: Database.Database, st: fs.Stats): void {
    try {
      this.db.close();
    } catch {
      // the old handle may point at a deleted file; nothing to save there
    }
    this.db = db;
    db.pragma('wal_autocheckpoint = 0');
    this.ino = st.ino;
    this.dev = st.dev;
    const self = this as unknown as { insertStmt: Database.Statement; updateStmt: Database.Statement; probeStmt: Database.Statement };
    self.insertStmt = db.prepare(this.insertStmt.source);
    self.updateStmt = db.prepare(this.updateStmt.source);
    self.probeStmt = db.prepare(this.probeStmt.source);
    const lb = lastBlock(db);
    this.lastBlk = lb ? { seq: lb.seq, hash: lb.hash } : undefined;
  }

  private writeHeadSafe(): void {
    if (!this.lastBlk) return;
    try {
      writeHead(this.files.head, { journalId: this.journalId, seq: this.lastBlk.seq, hash: this.lastBlk.hash.toString('hex'), sealedMs: Date.now() });
    } catch {
      // the witness is best effort; the chain itself is in the database
    }
  }

  /** Orderly stop: everything pending is written; rows still open are sealed as they are. */
  close(): CommitResult {
    for (const [id, row] of this.open) {
      this.finishedRows.set(id, row);
      this.dirty.add(id);
    }
    this.open.clear();
    const r = this.commit(true);
    if (r.ok) {
      try {
        this.db.transaction(() => {
          appendEvent(this.db, this.journalId, this.signer, 'stop', { pid: process.pid, records: this.recordsWritten, blocks: this.blocksSealed, lastBlock: this.lastBlk?.seq ?? 0 });
        }).immediate();
      } catch {
        // reported through the result of the final commit already when the store is broken
      }
    }
    try {
      // back to a rollback journal while the service is stopped: a WAL database cannot be read
      // by an operator who may not create its -shm file; the next start turns WAL on again
      if (r.ok) this.db.pragma('journal_mode = DELETE');
    } catch {
      // another reader holds it: it stays in WAL mode, readable as long as -shm exists
    }
    try {
      this.db.close();
    } catch {
      // closing a store whose file vanished
    }
    return r;
  }

  get lastBlockSeq(): number {
    return this.lastBlk?.seq ?? 0;
  }
}
