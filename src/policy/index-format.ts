/**
 * The compiled list index file (see docs/index-format.md). One file, read whole into memory and
 * viewed as typed arrays: no per-entry object is ever created at load.
 *
 *   offset  size  field
 *   0       8     magic "GFINDEX\n"
 *   8       4     u32 LE format version (FORMAT_VERSION)
 *   12      4     u32 LE header length H in bytes (UTF-8 JSON)
 *   16      4     u32 LE CRC-32 (zlib) of every byte from offset 24 to the end of the file
 *   20      4     u32 LE 0x01020304 (byte-order mark: typed arrays use the host order, and
 *                 the file is little-endian, so a big-endian host refuses it)
 *   24      H     header JSON (IndexHeader): categories, aliases, counts, expressions,
 *                 section table
 *   ...           padding to a multiple of 8, then the sections in this order, each starting
 *                 on a multiple of 8:
 *     dkeys    Int32Array[2*dcap]    domain table, open addressing (linear probing):
 *                                    slot i = (lo, hi) 64-bit key of a domain or IPv4/IPv6
 *                                    literal (hash.ts), lo = 0 = empty slot
 *     dvals    Uint16Array[dcap]     category-set id of the slot's entry
 *     sets     Uint32Array[S*W]      category sets: set s = words [s*W, s*W+W), bit c = category
 *                                    c (index in header.categories); set 0 is empty. W = ceil(C/32)
 *                                    so any number of categories works
 *     ukeys    Int32Array[2*ucap]    url-host table, same scheme as dkeys, key of a url host
 *     uvals    Uint32Array[ucap]     group id of the slot's host
 *     ugroups  Uint32Array[2*G]      group g = (first entry, entry count)
 *     uentries Uint32Array[3*E]      entry e = (category, blob offset, blob length)
 *     ublob    Uint8Array[B]         url paths, lower case, '/'-prefixed, with query if any
 *     filter   Uint32Array[F/32]     presence filter over every key of dkeys and ukeys: bit
 *                                    (hi & 0x7fffffff) % F is set for each key (F about 10 bits
 *                                    per key). A clear bit answers a miss from a few MB that stay
 *                                    in the CPU cache, instead of a random read in the tables
 *
 * Slot of a key = (lo & 0x7fffffff) % cap, then the next slots. The table is built at a load factor of
 * about 0.65: 10 bytes per slot, about 15.4 bytes per domain.
 */
import * as zlib from 'node:zlib';
import { GardefouError } from '../errors';

export const MAGIC = 'GFINDEX\n';
export const FORMAT_VERSION = 1;
export const PRELUDE_BYTES = 24;
const BOM = 0x01020304;

export type Usage = 'black' | 'white';

export interface CategoryMeta {
  name: string;
  /** French / English display names from global_usage (null when absent) */
  fr: string | null;
  en: string | null;
  descFr: string | null;
  descEn: string | null;
  /** from the category's `usage` file; [] when it has none */
  usage: Usage[];
  /** alias names: from `usage` and from alias files / symlinks at the top of the tree */
  aliases: string[];
  domains: number;
  urls: number;
  expressions: number;
}

export interface Malformed {
  file: string;
  line: number;
  text: string;
  reason: string;
}

export interface IndexHeader {
  format: 'gardefou-index';
  version: number;
  created: string;
  source: string;
  categories: CategoryMeta[];
  /** alias name -> category name */
  aliases: Record<string, string>;
  domains: { count: number; capacity: number; sets: number; words: number };
  urls: { hosts: number; capacity: number; groups: number; entries: number; blobBytes: number };
  /** size in bits of the presence filter (a multiple of 32) */
  filterBits: number;
  /** expressions, already converted to JavaScript RegExp syntax (flag i) */
  expressions: Array<{ category: number; source: string }>;
  malformed: { count: number; first: Malformed[] };
  sections: Record<SectionName, { offset: number; length: number }>;
}

export const SECTION_NAMES = ['dkeys', 'dvals', 'sets', 'ukeys', 'uvals', 'ugroups', 'uentries', 'ublob', 'filter'] as const;
export type SectionName = (typeof SECTION_NAMES)[number];

export interface IndexSections {
  dkeys: Int32Array;
  dvals: Uint16Array;
  sets: Uint32Array;
  ukeys: Int32Array;
  uvals: Uint32Array;
  ugroups: Uint32Array;
  uentries: Uint32Array;
  ublob: Uint8Array;
  filter: Uint32Array;
}

export class IndexFormatError extends GardefouError {
  constructor(message: string) {
    super('GARDEFOU_INDEX', message);
    this.name = 'IndexFormatError';
  }
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Exact size of the file for a header (whose section table is filled) and sections. */
function layout(header: IndexHeader, s: IndexSections): { headerBytes: Buffer; total: number } {
  let headerBytes = Buffer.alloc(0);
  // The section offsets depend on the header length, which depends on the offsets: iterate
  // until stable (two rounds at most in practice).
  for (let round = 0; round < 4; round++) {
    headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
    let off = align8(PRELUDE_BYTES + headerBytes.length);
    let changed = false;
    for (const name of SECTION_NAMES) {
      const len = s[name].byteLength;
      const cur = header.sections[name];
      if (!cur || cur.offset !== off || cur.length !== len) changed = true;
      header.sections[name] = { offset: off, length: len };
      off = align8(off + len);
    }
    if (!changed) return { headerBytes, total: off };
  }
  throw new Error('index layout did not converge');
}

/** Serialises an index to one Buffer (the exact bytes of the file). */
export function serializeIndex(header: IndexHeader, s: IndexSections): Buffer {
  const { headerBytes, total } = layout(header, s);
  const buf = Buffer.alloc(total);
  buf.write(MAGIC, 0, 'latin1');
  buf.writeUInt32LE(FORMAT_VERSION, 8);
  buf.writeUInt32LE(headerBytes.length, 12);
  buf.writeUInt32LE(BOM, 20);
  headerBytes.copy(buf, PRELUDE_BYTES);
  for (const name of SECTION_NAMES) {
    const a = s[name];
    const src = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    src.copy(buf, header.sections[name].offset);
  }
  buf.writeUInt32LE(zlib.crc32(buf.subarray(PRELUDE_BYTES)), 16);
  return buf;
}

export function isIndexFile(head: Buffer): boolean {
  return head.length >= 8 && head.toString('latin1', 0, 8) === MAGIC;
}

/**
 * Checks and views a serialised index. The typed arrays share `buf`'s memory. Throws
 * IndexFormatError naming what is wrong ("expected X, got Y").
 */
export function parseIndex(input: Buffer, what: string): { header: IndexHeader; sections: IndexSections } {
  if (input.length < PRELUDE_BYTES) throw new IndexFormatError(`reading index ${what}: file too short (${input.length} bytes)`);
  const magic = input.toString('latin1', 0, 8);
  if (magic !== MAGIC) throw new IndexFormatError(`reading index ${what}: not a gardefou index (expected magic ${JSON.stringify(MAGIC)}, got ${JSON.stringify(magic)})`);
  const version = input.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new IndexFormatError(`reading index ${what}: format version: expected ${FORMAT_VERSION}, got ${version} (recompile with gardefou lists import)`);
  if (new Uint32Array(new Uint8Array([4, 3, 2, 1]).buffer)[0] !== BOM) throw new IndexFormatError(`reading index ${what}: this host is big-endian; the index format is little-endian only`);
  const expectedCrc = input.readUInt32LE(16);
  const gotCrc = zlib.crc32(input.subarray(PRELUDE_BYTES));
  if (expectedCrc !== gotCrc) {
    throw new IndexFormatError(`reading index ${what}: checksum: expected crc32 ${hex(expectedCrc)}, got ${hex(gotCrc)} (file damaged or truncated)`);
  }
  // typed arrays need aligned offsets: copy in the rare case the buffer is not 8-aligned
  const buf = input.byteOffset % 8 === 0 ? input : Buffer.from(input);
  const headerLen = buf.readUInt32LE(12);
  let header: IndexHeader;
  try {
    header = JSON.parse(buf.toString('utf8', PRELUDE_BYTES, PRELUDE_BYTES + headerLen)) as IndexHeader;
  } catch (err) {
    throw new IndexFormatError(`reading index ${what}: header: ${(err as Error).message}`);
  }
  const sec = (name: SectionName) => {
    const s = header.sections?.[name];
    if (!s || s.offset % 8 !== 0 || s.offset + s.length > buf.length) {
      throw new IndexFormatError(`reading index ${what}: section ${name} out of bounds`);
    }
    return { off: buf.byteOffset + s.offset, len: s.length };
  };
  const u32 = (name: SectionName) => { const s = sec(name); return new Uint32Array(buf.buffer, s.off, s.len / 4); };
  const i32 = (name: SectionName) => { const s = sec(name); return new Int32Array(buf.buffer, s.off, s.len / 4); };
  const d = sec('dvals');
  const b = sec('ublob');
  const sections: IndexSections = {
    dkeys: i32('dkeys'),
    dvals: new Uint16Array(buf.buffer, d.off, d.len / 2),
    sets: u32('sets'),
    ukeys: i32('ukeys'),
    uvals: u32('uvals'),
    ugroups: u32('ugroups'),
    uentries: u32('uentries'),
    ublob: new Uint8Array(buf.buffer, b.off, b.len),
    filter: u32('filter'),
  };
  const h = header;
  const expect = (name: string, exp: number, got: number) => {
    if (exp !== got) throw new IndexFormatError(`reading index ${what}: ${name}: expected ${exp}, got ${got}`);
  };
  expect('domain table size', h.domains.capacity * 2, sections.dkeys.length);
  expect('domain values size', h.domains.capacity, sections.dvals.length);
  expect('category sets size', h.domains.sets * h.domains.words, sections.sets.length);
  expect('category words', Math.max(1, Math.ceil(h.categories.length / 32)), h.domains.words);
  expect('url table size', h.urls.capacity * 2, sections.ukeys.length);
  expect('url groups size', h.urls.groups * 2, sections.ugroups.length);
  expect('url entries size', h.urls.entries * 3, sections.uentries.length);
  expect('filter size', h.filterBits / 32, sections.filter.length);
  if (h.filterBits === 0) throw new IndexFormatError(`reading index ${what}: filter size: expected > 0, got 0`);
  return { header, sections };
}

function hex(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}
