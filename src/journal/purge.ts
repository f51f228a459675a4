/**
 * Retention: records whose connection started more than `retentionDays` ago are deleted, block
 * by block, in chunks of `chunkRows` rows, one chunk per transaction, yielding between chunks so
 * the writer's batches interleave (the append path waits at most one chunk).
 *
 * A block is purged once all its records are past retention (its signed max_start_ms is older
 * than the cutoff). Each purge run first appends a signed `purge` event carrying its cutoff;
 * verify accepts a record missing from a block only when the block's max_start_ms is older than
 * the cutoff of such an event. Held records (holds.ts) are spared; a block whose records are all
 * gone keeps its header (ids_hash, leaves_hash, hash, sig) and drops its id and leaf lists: the
 * anchor that keeps the remaining chain verifiable.
 */
import type Database from 'better-sqlite3';
import { appendEvent } from './chain';
import { activeHolds, holdsPredicate } from './holds';
import type { Signer } from './keys';
import { DAY_MS, decodeIds } from './record';

export interface PurgeOptions {
  retentionDays: number;
  nowMs: number;
  /** most rows per chunk; the chunk shrinks when a chunk takes longer than targetChunkMs */
  chunkRows: number;
  operator: string;
  /** aim for chunks (and pre-reads) at most this long (the longest the append path may wait); default 2 ms */
  targetChunkMs?: number;
}

export interface PurgeResult {
  cutoffMs: number;
  blocks: number;
  deleted: number;
  held: number;
  chunks: number;
  maxChunkMs: number;
  totalMs: number;
  event: number | null;
  stopped: boolean;
}

export const DEFAULT_CHUNK_ROWS = 500;

/**
 * Runs a purge; `defer` schedules the next chunk (setImmediate in the writer thread, so
 * batches run in between). `stopped` lets an orderly close end it between chunks.
 */
export async function runPurgeChunked(
  db: Database.Database, journalId: string, signer: Signer, o: PurgeOptions,
  defer: (fn: () => void) => void, stopped: () => boolean = () => false,
): Promise<PurgeResult> {
  const t0 = performance.now();
  const cutoffMs = o.nowMs - o.retentionDays * DAY_MS;
  const res: PurgeResult = { cutoffMs, blocks: 0, deleted: 0, held: 0, chunks: 0, maxChunkMs: 0, totalMs: 0, event: null, stopped: false };
  const seqs = (db.prepare('SELECT seq FROM blocks WHERE max_start_ms < ? AND ids IS NOT NULL ORDER BY seq').all(cutoffMs) as Array<{ seq: number }>).map((r) => r.seq);
  if (seqs.length === 0) {
    res.totalMs = performance.now() - t0;
    return res;
  }
  const holds = activeHolds(db);
  const pred = holdsPredicate(holds);
  res.event = db.transaction(() => appendEvent(db, journalId, signer, 'purge', {
    cutoffMs, cutoff: new Date(cutoffMs).toISOString(), retentionDays: o.retentionDays, operator: o.operator,
    blocks: seqs.length, firstBlock: seqs[0], lastBlock: seqs[seqs.length - 1], holds: holds.map((h) => h.id),
  }, o.nowMs)).immediate().seq;
  const getBlock = db.prepare('SELECT ids FROM blocks WHERE seq = ?');
  const del = db.prepare(`DELETE FROM records WHERE id = ? AND NOT ${pred.sql}`);
  const exists = db.prepare('SELECT 1 AS x FROM records WHERE id = ?');
  const drop = db.prepare('UPDATE blocks SET ids = NULL, leaves = NULL WHERE seq = ?');
  const target = o.targetChunkMs ?? 2;
  // Pre-reading (see warm below) looks each row up with `exists`: that reads the page holding it.
  // The requisition indexes are in another file, trimmed by the indexer thread (index-db.ts),
  // so a delete here touches `records` only.
  const tick = () => new Promise<void>((resolve) => defer(resolve));
  /**
   * A purged day is a month or a year old: its table pages are cold, and reading
   * them inside the delete transaction made one chunk last 50 ms. So the pages of the next
   * chunk are read first, outside any write transaction, a few rows per turn (the writer's
   * batches run in between); the delete then runs on warm pages only.
   */
  let warmSize = 16;
  const warm = async (ids: number[]): Promise<void> => {
    for (let i = 0; i < ids.length;) {
      const w0 = performance.now();
      const part = ids.slice(i, i + warmSize);
      i += part.length;
      for (const id of part) exists.get(id);
      const dt = performance.now() - w0;
      if (dt > target) warmSize = Math.max(4, Math.floor((warmSize * target) / dt));
      else if (dt < target / 2) warmSize = Math.min(1024, warmSize * 2);
      await tick();
    }
  };
  let size = Math.min(o.chunkRows, 64);
  // A chunk need not survive a power cut (the next purge redoes it): no fsync for it. The
  // writer's next batch commit (synchronous=FULL) syncs the WAL, purge frames included.
  const sync = db.pragma('synchronous', { simple: true }) as number;

  for (const seq of seqs) {
    const row = getBlock.get(seq) as { ids: Buffer | null } | undefined;
    if (!row || row.ids === null) continue;
    const ids = decodeIds(row.ids);
    let kept = 0;
    for (let i = 0; i < ids.length;) {
      if (stopped()) {
        res.stopped = true;
        res.totalMs = performance.now() - t0;
        return res;
      }
      const chunk = ids.slice(i, i + size);
      i += chunk.length;
      await warm(chunk);
      const last = i >= ids.length;
      const c0 = performance.now();
      db.pragma('synchronous = NORMAL');
      try {
        db.transaction(() => {
          for (const id of chunk) {
            if (del.run(id, ...pred.params).changes === 1) res.deleted++;
            else if (exists.get(id)) kept++;
          }
          if (last && kept === 0) drop.run(seq);
        })();
      } finally {
        db.pragma(`synchronous = ${sync}`);
      }
      const dt = performance.now() - c0;
      res.chunks++;
      if (dt > res.maxChunkMs) res.maxChunkMs = dt;
      // adapt: cold pages (a day read back from disk) make rows cost 10x more than warm ones
      // (never above chunkRows: shrinking on a slow chunk must not raise a small configured size)
      if (dt > target) size = Math.min(o.chunkRows, Math.max(8, Math.floor((size * target) / dt)));
      else if (dt < target / 2) size = Math.min(o.chunkRows, size * 2);
      await tick();
    }
    res.held += kept;
    res.blocks++;
  }
  res.totalMs = performance.now() - t0;
  return res;
}

/** The same, without yielding to anything else (the command-line purge in its own process). */
export async function runPurge(db: Database.Database, journalId: string, signer: Signer, o: PurgeOptions): Promise<PurgeResult> {
  return runPurgeChunked(db, journalId, signer, o, (fn) => setImmediate(fn));
}
