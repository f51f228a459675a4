/**
 * Tamper evidence: blocks of records and journal events, each a signed hash chain.
 *
 * Block (table `blocks`), version 1. A block seals the records finished since the previous
 * block (at most every second, or every BLOCK_MAX records), in ascending id order:
 *   ids      = encodeIds(ascending ids)           (record.ts: LEB128 deltas)
 *   leaves   = leaf(record) for each id, 16 bytes each, same order
 *   hash     = SHA-256("gardefou/block/v1\n" || prev(32) || seq || sealed_ms || count || min_id ||
 *              max_id || min_start_ms || max_start_ms || low_open_id      (each int64 BE)
 *              || SHA-256(ids) || SHA-256(leaves))
 *   sig      = Ed25519(journal key, hash)
 *   prev     = hash of block seq-1; for the first block SHA-256("gardefou/genesis\n" + journal_id)
 * low_open_id is the smallest id still open (or finished but not yet sealed) after this block:
 * recovery after a crash looks for unsealed rows from there on only.
 * After a purge the ids and leaves blobs of a block whose records are all gone are set to NULL;
 * ids_hash and leaves_hash stay, so the header still verifies and links: it is the anchor of
 * the purged part.
 *
 * Event (table `events`): hash = SHA-256("gardefou/event/v1\n" || prev || seq || time_ms ||
 * kind || "\n" || body), body a JSON object; first prev = SHA-256("gardefou/events\n" + journal_id).
 * Events are few (start, recovery, purge, hold, release) and may be appended by the command
 * line while the service runs, so the head is read inside the write transaction.
 */
import * as fs from 'node:fs';
import type Database from 'better-sqlite3';
import type { Signer } from './keys';
import { LEAF_BYTES, encodeIds, sha256, u64 } from './record';

export const BLOCK_MAX = 4096;

export interface BlockRow {
  seq: number;
  sealed_ms: number;
  count: number;
  min_id: number;
  max_id: number;
  min_start_ms: number;
  max_start_ms: number;
  low_open_id: number;
  ids: Buffer | null;
  leaves: Buffer | null;
  ids_hash: Buffer;
  leaves_hash: Buffer;
  prev: Buffer;
  hash: Buffer;
  sig: Buffer;
}

export interface EventRow {
  seq: number;
  time_ms: number;
  kind: string;
  body: string;
  prev: Buffer;
  hash: Buffer;
  sig: Buffer;
}

export interface SealEntry {
  id: number;
  leaf: Buffer;
  start: number;
}

export function genesisHash(journalId: string): Buffer {
  return sha256(`gardefou/genesis\n${journalId}`);
}

export function eventsGenesis(journalId: string): Buffer {
  return sha256(`gardefou/events\n${journalId}`);
}

export function blockHash(b: Omit<BlockRow, 'hash' | 'sig' | 'ids' | 'leaves'>): Buffer {
  return sha256(
    'gardefou/block/v1\n', b.prev, u64(b.seq), u64(b.sealed_ms), u64(b.count), u64(b.min_id), u64(b.max_id),
    u64(b.min_start_ms), u64(b.max_start_ms), u64(b.low_open_id), b.ids_hash, b.leaves_hash,
  );
}

export function eventHash(e: Omit<EventRow, 'hash' | 'sig'>): Buffer {
  return sha256('gardefou/event/v1\n', e.prev, u64(e.seq), u64(e.time_ms), e.kind, '\n', e.body);
}

export function lastBlock(db: Database.Database): BlockRow | undefined {
  return db.prepare('SELECT * FROM blocks ORDER BY seq DESC LIMIT 1').get() as BlockRow | undefined;
}

/** Builds (does not store) the block sealing `entries` after `prevBlock`. */
export function buildBlock(
  journalId: string, prevBlock: { seq: number; hash: Buffer } | undefined, entries: SealEntry[],
  lowOpenId: number, nowMs: number, signer: Signer,
): BlockRow {
  const sorted = entries.slice().sort((a, b) => a.id - b.id);
  const ids = encodeIds(sorted.map((e) => e.id));
  const leaves = Buffer.allocUnsafe(sorted.length * LEAF_BYTES);
  let minStart = Number.MAX_SAFE_INTEGER;
  let maxStart = 0;
  sorted.forEach((e, i) => {
    e.leaf.copy(leaves, i * LEAF_BYTES, 0, LEAF_BYTES);
    if (e.start < minStart) minStart = e.start;
    if (e.start > maxStart) maxStart = e.start;
  });
  const head = {
    seq: prevBlock ? prevBlock.seq + 1 : 1,
    sealed_ms: nowMs,
    count: sorted.length,
    min_id: sorted[0]?.id ?? 0,
    max_id: sorted[sorted.length - 1]?.id ?? 0,
    min_start_ms: sorted.length ? minStart : 0,
    max_start_ms: maxStart,
    low_open_id: lowOpenId,
    ids_hash: sha256(ids),
    leaves_hash: sha256(leaves),
    prev: prevBlock ? prevBlock.hash : genesisHash(journalId),
  };
  const hash = blockHash(head);
  return { ...head, ids, leaves, hash, sig: signer.sign(hash) };
}

export function insertBlock(db: Database.Database, b: BlockRow): void {
  db.prepare(`INSERT INTO blocks (seq, sealed_ms, count, min_id, max_id, min_start_ms, max_start_ms, low_open_id,
    ids, leaves, ids_hash, leaves_hash, prev, hash, sig) VALUES (@seq, @sealed_ms, @count, @min_id, @max_id,
    @min_start_ms, @max_start_ms, @low_open_id, @ids, @leaves, @ids_hash, @leaves_hash, @prev, @hash, @sig)`).run(b);
}

/** Appends a signed event; call inside a write transaction. */
export function appendEvent(db: Database.Database, journalId: string, signer: Signer, kind: string, body: object, nowMs = Date.now()): EventRow {
  const last = db.prepare('SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: Buffer } | undefined;
  const e = {
    seq: last ? last.seq + 1 : 1,
    time_ms: nowMs,
    kind,
    body: JSON.stringify(body),
    prev: last ? last.hash : eventsGenesis(journalId),
  };
  const hash = eventHash(e);
  const row: EventRow = { ...e, hash, sig: signer.sign(hash) };
  db.prepare('INSERT INTO events (seq, time_ms, kind, body, prev, hash, sig) VALUES (@seq, @time_ms, @kind, @body, @prev, @hash, @sig)').run(row);
  return row;
}

/**
 * The head witness: the last sealed block, rewritten atomically after seals. A copy of the
 * journal truncated together with its blocks still verifies on its own; this file (and the
 * operational log line at close) is what shows the tail went missing.
 */
export interface HeadWitness {
  journalId: string;
  seq: number;
  hash: string;
  sealedMs: number;
}

export function writeHead(file: string, h: HeadWitness): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(h)}\n`, { mode: 0o640 });
  fs.renameSync(tmp, file);
}

export function readHead(file: string): HeadWitness | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as HeadWitness;
  } catch {
    return null;
  }
}
