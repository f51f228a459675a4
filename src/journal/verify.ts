/**
 * `gardefou journal verify`: walks the event chain and the block chain with only the public key
 * and reports every record that was altered, inserted or deleted (by id, in id order), every
 * broken link (blocks reordered, inserted or removed) and a tail cut off behind the head witness.
 *
 * Rules (see chain.ts and purge.ts for the layouts):
 *  - events: seq 1..n without gap, each prev = hash of the previous, hash recomputed, signature.
 *    The largest cutoff of a signed `purge` event is the purge horizon.
 *  - blocks: same for the block chain; ids/leaves must match their hashes in the signed header.
 *  - each id of a block: the row exists (or the block is older than the purge horizon), its
 *    leaf matches, its blk names the block and its day matches its start.
 *  - each row not covered by a block is either open (blk NULL, id >= low_open_id of the last
 *    block: the in-flight tail) or it was inserted.
 */
import type { KeyObject } from 'node:crypto';
import type Database from 'better-sqlite3';
import { blockHash, eventHash, eventsGenesis, genesisHash, readHead, type BlockRow, type EventRow } from './chain';
import { verifySig } from './keys';
import { LEAF_BYTES, dayOf, decodeIds, leafOf, sha256, type RecordRow } from './record';
import { getMeta } from './store';

export type ProblemKind = 'altered' | 'inserted' | 'deleted' | 'chain' | 'truncated' | 'event' | 'corrupt';

export interface Problem {
  kind: ProblemKind;
  recordId?: number;
  block?: number;
  event?: number;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  journalId: string | null;
  events: number;
  blocks: number;
  records: number;
  purgedBlocks: number;
  purgedRecords: number;
  openRecords: number;
  purgeHorizonMs: number | null;
  problems: Problem[];
  /** the first problem: lowest record id, else the first chain problem */
  first: Problem | null;
}

export function verifyJournal(db: Database.Database, pub: KeyObject, opts: { headFile?: string; maxProblems?: number } = {}): VerifyReport {
  const max = opts.maxProblems ?? 100;
  const problems: Problem[] = [];
  const add = (p: Problem) => {
    if (problems.length < max) problems.push(p);
  };
  const r: VerifyReport = {
    ok: false, journalId: null, events: 0, blocks: 0, records: 0, purgedBlocks: 0, purgedRecords: 0, openRecords: 0,
    purgeHorizonMs: null, problems, first: null,
  };
  try {
    walk(db, pub, r, add, opts.headFile);
  } catch (err) {
    add({ kind: 'corrupt', message: `journal unreadable: ${(err as Error).message}` });
  }
  problems.sort((a, b) => (a.recordId ?? Number.MAX_SAFE_INTEGER) - (b.recordId ?? Number.MAX_SAFE_INTEGER));
  r.first = problems[0] ?? null;
  r.ok = problems.length === 0;
  return r;
}

function walk(db: Database.Database, pub: KeyObject, r: VerifyReport, add: (p: Problem) => void, headFile: string | undefined): void {
  const integrity = db.pragma('quick_check', { simple: true }) as string;
  if (integrity !== 'ok') add({ kind: 'corrupt', message: `sqlite quick_check: ${integrity}` });
  const journalId = getMeta(db, 'journal_id');
  r.journalId = journalId;
  if (journalId === null) {
    add({ kind: 'corrupt', message: 'meta.journal_id is missing' });
    return;
  }

  // events
  let prev = eventsGenesis(journalId);
  let expect = 1;
  let horizon: number | null = null;
  for (const e of db.prepare('SELECT * FROM events ORDER BY seq').iterate() as IterableIterator<EventRow>) {
    r.events++;
    if (e.seq !== expect) add({ kind: 'event', event: e.seq, message: `event ${e.seq}: expected event ${expect} (events deleted, inserted or reordered)` });
    else if (!e.prev.equals(prev)) add({ kind: 'event', event: e.seq, message: `event ${e.seq}: link to event ${e.seq - 1} broken` });
    const h = eventHash(e);
    if (!h.equals(e.hash)) add({ kind: 'event', event: e.seq, message: `event ${e.seq} (${e.kind}) altered` });
    else if (!verifySig(pub, e.hash, e.sig)) add({ kind: 'event', event: e.seq, message: `event ${e.seq}: bad signature` });
    else if (e.kind === 'purge') {
      const c = (JSON.parse(e.body) as { cutoffMs?: number }).cutoffMs;
      if (typeof c === 'number' && (horizon === null || c > horizon)) horizon = c;
    }
    prev = e.hash;
    expect = e.seq + 1;
  }
  r.purgeHorizonMs = horizon;

  // blocks and the records they seal
  const maxRow = db.prepare('SELECT max(id) AS m FROM records').get() as { m: number | null };
  const seen = new Uint8Array(((maxRow.m ?? 0) >> 3) + 1);
  const getRow = db.prepare('SELECT * FROM records WHERE id = ?');
  prev = genesisHash(journalId);
  expect = 1;
  let last: BlockRow | null = null;
  /** ids of a block that cannot be checked: reported once, through the block */
  const markAll = (b: BlockRow) => {
    if (b.ids === null) return;
    try {
      for (const id of decodeIds(b.ids)) if (id >> 3 < seen.length) seen[id >> 3]! |= 1 << (id & 7);
    } catch {
      // an unreadable id list: its rows will show as inserted
    }
  };
  for (const b of db.prepare('SELECT * FROM blocks ORDER BY seq').iterate() as IterableIterator<BlockRow>) {
    r.blocks++;
    if (b.seq !== expect) add({ kind: 'chain', block: b.seq, message: `block ${b.seq}: expected block ${expect} (blocks deleted, inserted or reordered)` });
    else if (!b.prev.equals(prev)) add({ kind: 'chain', block: b.seq, message: `block ${b.seq}: link to block ${b.seq - 1} broken (blocks reordered or replaced)` });
    prev = b.hash;
    expect = b.seq + 1;
    last = b;
    if (!blockHash(b).equals(b.hash)) {
      add({ kind: 'chain', block: b.seq, recordId: b.min_id, message: `block ${b.seq}: header altered (its records ${b.min_id}..${b.max_id} cannot be trusted)` });
      markAll(b);
      continue;
    }
    if (!verifySig(pub, b.hash, b.sig)) {
      add({ kind: 'chain', block: b.seq, recordId: b.min_id, message: `block ${b.seq}: bad signature (records ${b.min_id}..${b.max_id}; another key, or a forged block)` });
      markAll(b);
      continue;
    }
    const purgeable = horizon !== null && b.max_start_ms < horizon;
    if (b.ids === null || b.leaves === null) {
      if (purgeable) {
        r.purgedBlocks++;
        r.purgedRecords += b.count;
      } else {
        add({ kind: 'deleted', block: b.seq, recordId: b.min_id, message: `block ${b.seq}: its ${b.count} records (ids ${b.min_id}..${b.max_id}) were removed without a purge` });
      }
      continue;
    }
    if (!sha256(b.ids).equals(b.ids_hash) || !sha256(b.leaves).equals(b.leaves_hash)) {
      add({ kind: 'chain', block: b.seq, recordId: b.min_id, message: `block ${b.seq}: id or leaf list altered (records ${b.min_id}..${b.max_id})` });
      markAll(b);
      continue;
    }
    const ids = decodeIds(b.ids);
    if (ids.length !== b.count || b.leaves.length !== b.count * LEAF_BYTES) {
      add({ kind: 'chain', block: b.seq, message: `block ${b.seq}: ${ids.length} ids for a count of ${b.count}` });
      continue;
    }
    let gone = 0;
    ids.forEach((id, i) => {
      const row = getRow.get(id) as (RecordRow & { blk: number | null; day: number }) | undefined;
      if (!row) {
        if (purgeable) gone++;
        else add({ kind: 'deleted', recordId: id, block: b.seq, message: `record ${id} deleted (sealed in block ${b.seq})` });
        return;
      }
      if (id >> 3 < seen.length) seen[id >> 3]! |= 1 << (id & 7);
      r.records++;
      const leaf = leafOf(row);
      if (!leaf.equals(b.leaves!.subarray(i * LEAF_BYTES, (i + 1) * LEAF_BYTES))) {
        add({ kind: 'altered', recordId: id, block: b.seq, message: `record ${id} altered (does not match block ${b.seq})` });
      } else if (row.blk !== b.seq || row.day !== dayOf(row.start_ms)) {
        add({ kind: 'altered', recordId: id, block: b.seq, message: `record ${id}: blk/day columns altered` });
      }
    });
    if (gone > 0) {
      r.purgedRecords += gone;
      if (gone === ids.length) r.purgedBlocks++;
    }
  }

  // rows no block accounts for
  const lowOpen = last ? last.low_open_id : 0;
  const lastSeq = last ? last.seq : 0;
  for (const row of db.prepare('SELECT id, blk FROM records ORDER BY id').iterate() as IterableIterator<{ id: number; blk: number | null }>) {
    if ((seen[row.id >> 3]! & (1 << (row.id & 7))) !== 0) continue;
    if (row.id >= lowOpen && (row.blk === null || row.blk > lastSeq)) r.openRecords++;
    else add({ kind: 'inserted', recordId: row.id, message: `record ${row.id} inserted (no sealed block lists it)` });
  }

  if (headFile) {
    const head = readHead(headFile);
    if (head && head.journalId === journalId) {
      if (head.seq > lastSeq) add({ kind: 'truncated', block: lastSeq + 1, message: `journal truncated: the head witness ${headFile} names block ${head.seq}, the journal ends at block ${lastSeq}` });
      else {
        const hb = db.prepare('SELECT hash FROM blocks WHERE seq = ?').get(head.seq) as { hash: Buffer } | undefined;
        if (hb && hb.hash.toString('hex') !== head.hash) add({ kind: 'chain', block: head.seq, message: `block ${head.seq} differs from the head witness ${headFile}` });
      }
    }
  }
}
