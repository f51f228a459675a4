/**
 * One journal record as stored (a row of `records`), its canonical encoding and hash, and the
 * small binary helpers the chain uses.
 *
 * Canonical encoding of a record (what the chain hashes), version 1:
 *   UTF-8 bytes of  "gardefou/record/v1\n" + JSON.stringify([
 *     id, ref, start_ms, end_ms, client_ip, client_port, user, workstation,
 *     egress_ip, egress_port, dest_host, dest_ip, dest_port, protocol, method,
 *     decision, reason, profile, category, list_serial, status, bytes_in, bytes_out ])
 * Every value is an integer, a string or null, so JSON.stringify is deterministic. The leaf of
 * a record is the first LEAF_BYTES bytes of SHA-256 of that encoding (128 bits: a second
 * preimage stays out of reach, and 16 bytes per record keep the per-block leaf list small).
 * `day` (partition key) and `blk` (which block sealed the row) are derived, not hashed; verify
 * checks them separately.
 */
import * as crypto from 'node:crypto';
import type { JournalDecision, JournalProtocol } from './types';

export const LEAF_BYTES = 16;
export const DAY_MS = 86_400_000;

export interface RecordRow {
  id: number;
  ref: string;
  start_ms: number;
  end_ms: number | null;
  client_ip: string;
  client_port: number;
  user: string | null;
  workstation: string | null;
  egress_ip: string | null;
  egress_port: number | null;
  dest_host: string;
  dest_ip: string | null;
  dest_port: number;
  protocol: JournalProtocol;
  method: string;
  decision: JournalDecision;
  reason: string;
  profile: string | null;
  category: string | null;
  list_serial: string | null;
  status: number | null;
  bytes_in: number;
  bytes_out: number;
}

/** Column order of the canonical encoding, of CSV exports and of `SELECT` lists. */
export const RECORD_COLUMNS = [
  'id', 'ref', 'start_ms', 'end_ms', 'client_ip', 'client_port', 'user', 'workstation',
  'egress_ip', 'egress_port', 'dest_host', 'dest_ip', 'dest_port', 'protocol', 'method',
  'decision', 'reason', 'profile', 'category', 'list_serial', 'status', 'bytes_in', 'bytes_out',
] as const satisfies ReadonlyArray<keyof RecordRow>;

export function dayOf(ms: number): number {
  return Math.floor(ms / DAY_MS);
}

export function canonical(row: RecordRow): string {
  // the order of RECORD_COLUMNS, spelt out: a literal array builds faster than a loop over names
  const r = row;
  return `gardefou/record/v1\n${JSON.stringify([
    r.id, r.ref, r.start_ms, r.end_ms, r.client_ip, r.client_port, r.user, r.workstation,
    r.egress_ip, r.egress_port, r.dest_host, r.dest_ip, r.dest_port, r.protocol, r.method,
    r.decision, r.reason, r.profile, r.category, r.list_serial, r.status, r.bytes_in, r.bytes_out,
  ])}`;
}

/** One-shot crypto.hash (Node >= 20.12) where present: no Hash object per record. */
const oneShot = (crypto as unknown as { hash?: (alg: string, data: string, enc: 'buffer') => Buffer }).hash;

export function leafOf(row: RecordRow): Buffer {
  const s = canonical(row);
  const digest = oneShot ? oneShot('sha256', s, 'buffer') : crypto.createHash('sha256').update(s).digest();
  return digest.subarray(0, LEAF_BYTES);
}

export function sha256(...parts: Array<Buffer | string>): Buffer {
  const h = crypto.createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * Ids of a block: ascending, encoded as LEB128 varints, the first absolute and each next one
 * as the difference to the previous (mostly 1 byte per record).
 */
export function encodeIds(ids: readonly number[]): Buffer {
  const out = Buffer.allocUnsafe(ids.length * 8 + 8);
  let o = 0;
  let prev = 0;
  for (const id of ids) {
    let v = id - prev;
    if (v < 0 || !Number.isSafeInteger(v)) throw new RangeError(`block ids must ascend, got ${id} after ${prev}`);
    prev = id;
    while (v >= 0x80) {
      out[o++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    out[o++] = v;
  }
  return Buffer.from(out.subarray(0, o));
}

export function decodeIds(buf: Uint8Array): number[] {
  const ids: number[] = [];
  let prev = 0;
  let i = 0;
  while (i < buf.length) {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[i++];
      if (b === undefined) throw new RangeError('truncated id list');
      v += (b & 0x7f) * mul;
      if (b < 0x80) break;
      mul *= 0x80;
    }
    prev += v;
    ids.push(prev);
  }
  return ids;
}

/** Fixed-width big-endian integer (for hashed headers). */
export function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(n));
  return b;
}
