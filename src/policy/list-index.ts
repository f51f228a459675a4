/**
 * The loaded list index: typed-array views over the compiled file (index-format.ts) and the
 * lookups the engine runs per request.
 *
 * Lookup of a host walks it once, right to left. At each label boundary the key of the suffix
 * to its right is complete (hash.ts) and is kept in a preallocated array. Then the presence
 * filter bit of every suffix is read (independent reads: the CPU overlaps their cache misses),
 * and only the suffixes that pass are probed in the domain table and the url-host table;
 * suffixes that hit are recorded in preallocated arrays (hitStart / hitSet / hitGroup).
 * The engine then asks "which hit is in this category mask?" as many times as it needs
 * (mandatory layer, profile) without hashing again. IPv4 and IPv6 literals are probed whole,
 * never by suffix. Nothing on this path allocates: charCodeAt, integer state, reused arrays.
 */
import { findSlot, finalHi, finalLo, SEED1, SEED2, step1, step2 } from './hash';
import { CategoryMeta, IndexHeader, IndexSections, parseIndex } from './index-format';
import { isIPv4Literal } from './normalise';

/** More labels than this cannot be a real host (DNS: 127); deeper suffixes are ignored. */
const MAX_HITS = 128;

export interface CompiledExpression {
  category: number;
  source: string;
  re: RegExp;
}

export class ListIndex {
  readonly header: IndexHeader;
  readonly categories: readonly CategoryMeta[];
  /** words per category mask */
  readonly words: number;
  /** every expression, compiled once at load */
  readonly expressions: readonly CompiledExpression[];
  /** expressions the index carried but this JS engine could not compile */
  readonly badExpressions: string[] = [];
  readonly bytes: number;
  private readonly byName = new Map<string, number>();
  private readonly s: IndexSections;
  private readonly dcap: number;
  private readonly ucap: number;
  private readonly filter: Uint32Array;
  private readonly filterBits: number;
  /**
   * Presence filter of the url-entry hosts alone, built at load from the url table (a few
   * hundred KB, stays in cache): a domain hit then costs one random read of the big domain
   * table, not a second one in the url table. Bit = hi & (urlFilterBits - 1).
   */
  private readonly urlFilter: Uint32Array;
  private readonly urlFilterMask: number;

  // results of the last collect(): reused, never reallocated
  readonly hitStart = new Int32Array(MAX_HITS);
  readonly hitSet = new Int32Array(MAX_HITS);
  readonly hitGroup = new Int32Array(MAX_HITS);
  // suffix keys of the host being looked up
  private readonly kLo = new Int32Array(MAX_HITS);
  private readonly kHi = new Int32Array(MAX_HITS);
  private readonly kStart = new Int32Array(MAX_HITS);
  /** set by domainMatch / urlMatch: start of the matching suffix, category, url entry */
  matchStart = -1;
  matchCategory = -1;
  matchEntry = -1;

  constructor(buf: Buffer, what: string) {
    const { header, sections } = parseIndex(buf, what);
    this.header = header;
    this.s = sections;
    this.categories = header.categories;
    this.words = header.domains.words;
    this.dcap = header.domains.capacity;
    this.ucap = header.urls.capacity;
    this.filter = sections.filter;
    this.filterBits = header.filterBits;
    // about 16 bits per url host, a power of two so the bit is a mask (no division)
    let ubits = 1024;
    while (ubits < header.urls.capacity * 16 && ubits < 1 << 26) ubits *= 2;
    this.urlFilter = new Uint32Array(ubits >>> 5);
    this.urlFilterMask = ubits - 1;
    const ukeys = sections.ukeys;
    for (let i = 0; i < this.ucap; i++) {
      if (ukeys[2 * i] === 0) continue;
      const bit = ukeys[2 * i + 1]! & this.urlFilterMask;
      this.urlFilter[bit >>> 5]! |= 1 << (bit & 31);
    }
    this.bytes = buf.length;
    header.categories.forEach((c, i) => {
      this.byName.set(c.name, i);
    });
    for (const [alias, target] of Object.entries(header.aliases)) {
      const i = this.byName.get(target);
      if (i !== undefined && !this.byName.has(alias)) this.byName.set(alias, i);
    }
    const exprs: CompiledExpression[] = [];
    for (const e of header.expressions) {
      try {
        exprs.push({ category: e.category, source: e.source, re: new RegExp(e.source, 'i') });
      } catch {
        this.badExpressions.push(e.source);
      }
    }
    this.expressions = exprs;
  }

  /** Category index by name or alias, or undefined. */
  categoryIndex(name: string): number | undefined {
    return this.byName.get(name);
  }

  newMask(): Uint32Array {
    return new Uint32Array(this.words);
  }

  /** Bits of a category set as category indices (for explanations, not the hot path). */
  setMembers(set: number): number[] {
    const out: number[] = [];
    for (let w = 0; w < this.words; w++) {
      let x = this.s.sets[set * this.words + w]!;
      while (x !== 0) {
        const bit = 31 - Math.clz32(x & -x);
        out.push(w * 32 + bit);
        x &= x - 1;
      }
    }
    return out;
  }

  /**
   * Walks `host` (normalised) and records every suffix listed as a domain or as a url host.
   * Returns the number of hits; hits are ordered from the shortest suffix to the whole host.
   */
  collect(host: string): number {
    const n = host.length;
    if (n === 0) return 0;
    const last = host.charCodeAt(n - 1);
    if ((last >= 48 && last <= 57 && isIPv4Literal(host)) || host.indexOf(':') >= 0) {
      // IP literal: exact match only
      let h1 = SEED1;
      let h2 = SEED2;
      for (let i = n - 1; i >= 0; i--) {
        const c = host.charCodeAt(i);
        h1 = step1(h1, c);
        h2 = step2(h2, c);
      }
      return this.probe(0, finalLo(h1, n), finalHi(h2, n), 0);
    }
    // Two phases: first the key of every suffix (pure arithmetic), then the filter reads. The
    // reads do not depend on each other, so the CPU overlaps their cache misses.
    let h1 = SEED1;
    let h2 = SEED2;
    let nk = 0;
    const kLo = this.kLo;
    const kHi = this.kHi;
    const kStart = this.kStart;
    for (let i = n - 1; i >= 0; i--) {
      const c = host.charCodeAt(i);
      if (c === 46 /* . */ && nk < MAX_HITS - 1) {
        const len = n - i - 1;
        kLo[nk] = finalLo(h1, len);
        kHi[nk] = finalHi(h2, len);
        kStart[nk] = i + 1;
        nk++;
      }
      h1 = step1(h1, c);
      h2 = step2(h2, c);
    }
    kLo[nk] = finalLo(h1, n);
    kHi[nk] = finalHi(h2, n);
    kStart[nk] = 0;
    nk++;
    const filter = this.filter;
    const bits = this.filterBits;
    let pass = 0;
    for (let k = 0; k < nk; k++) {
      const bit = (kHi[k]! & 0x7fffffff) % bits;
      if ((filter[bit >>> 5]! & (1 << (bit & 31))) !== 0) kStart[pass++] = kStart[k]! | (k << 16);
    }
    let hits = 0;
    for (let p = 0; p < pass; p++) {
      const k = kStart[p]! >>> 16;
      hits = this.probe(kStart[p]! & 0xffff, kLo[k]!, kHi[k]!, hits);
    }
    return hits;
  }

  private probe(start: number, lo: number, hi: number, hits: number): number {
    const bit = (hi & 0x7fffffff) % this.filterBits;
    if ((this.filter[bit >>> 5]! & (1 << (bit & 31))) === 0) return hits; // certainly absent
    const d = findSlot(this.s.dkeys, this.dcap, lo, hi);
    const ubit = hi & this.urlFilterMask;
    const u = (this.urlFilter[ubit >>> 5]! & (1 << (ubit & 31))) !== 0 ? findSlot(this.s.ukeys, this.ucap, lo, hi) : -1;
    if (d < 0 && u < 0) return hits;
    this.hitStart[hits] = start;
    this.hitSet[hits] = d < 0 ? 0 : this.s.dvals[d]!;
    this.hitGroup[hits] = u < 0 ? -1 : this.s.uvals[u]!;
    return hits + 1;
  }

  /**
   * First domain hit (of the last collect) whose category set meets `mask`. Sets matchStart
   * and matchCategory (lowest category index in the intersection). Returns true on a match.
   */
  domainMatch(hits: number, mask: Uint32Array): boolean {
    const W = this.words;
    const sets = this.s.sets;
    for (let k = 0; k < hits; k++) {
      const set = this.hitSet[k]!;
      if (set === 0) continue;
      for (let w = 0; w < W; w++) {
        const x = sets[set * W + w]! & mask[w]!;
        if (x !== 0) {
          this.matchStart = this.hitStart[k]!;
          this.matchCategory = w * 32 + (31 - Math.clz32(x & -x));
          return true;
        }
      }
    }
    return false;
  }

  /**
   * First url entry (of the hosts of the last collect) whose category is in `mask` and whose
   * path is a prefix of `path` on a boundary. Entries with path '/' cover the whole host (and
   * so also CONNECT, whose path is ''). Sets matchStart, matchCategory, matchEntry.
   */
  urlMatch(hits: number, path: string, mask: Uint32Array): boolean {
    const { ugroups, uentries, ublob } = this.s;
    for (let k = hits - 1; k >= 0; k--) {
      const g = this.hitGroup[k]!;
      if (g < 0) continue;
      const first = ugroups[2 * g]!;
      const end = first + ugroups[2 * g + 1]!;
      for (let e = first; e < end; e++) {
        const cat = uentries[3 * e]!;
        if ((mask[cat >>> 5]! & (1 << (cat & 31))) === 0) continue;
        if (pathMatches(path, ublob, uentries[3 * e + 1]!, uentries[3 * e + 2]!)) {
          this.matchStart = this.hitStart[k]!;
          this.matchCategory = cat;
          this.matchEntry = e;
          return true;
        }
      }
    }
    return false;
  }

  /** Categories of every url entry matching (hits of the last collect): for explanations. */
  urlCategories(hits: number, path: string): number[] {
    const { ugroups, uentries, ublob } = this.s;
    const out: number[] = [];
    for (let k = 0; k < hits; k++) {
      const g = this.hitGroup[k]!;
      if (g < 0) continue;
      const first = ugroups[2 * g]!;
      const end = first + ugroups[2 * g + 1]!;
      for (let e = first; e < end; e++) {
        if (pathMatches(path, ublob, uentries[3 * e + 1]!, uentries[3 * e + 2]!)) out.push(uentries[3 * e]!);
      }
    }
    return out;
  }

  /** The host/path text of url entry `e` given the host suffix it was found under. */
  urlEntryText(host: string, start: number, e: number): string {
    const off = this.s.uentries[3 * e + 1]!;
    const len = this.s.uentries[3 * e + 2]!;
    return host.slice(start) + Buffer.from(this.s.ublob.buffer, this.s.ublob.byteOffset + off, len).toString('utf8');
  }

  /** Categories of an exact domain entry (tests, `check`): indices, or [] when not listed. */
  exactCategories(host: string): number[] {
    const n = this.collect(host);
    for (let k = 0; k < n; k++) {
      if (this.hitStart[k] === 0) return this.setMembers(this.hitSet[k]!);
    }
    return [];
  }

  describe(): { categories: number; domains: number; urls: number; expressions: number } {
    return {
      categories: this.categories.length,
      domains: this.header.domains.count,
      urls: this.header.urls.entries,
      expressions: this.expressions.length,
    };
  }
}

function isUnreserved(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95 || c === 126;
}

/**
 * `path` starts with the entry (ASCII case-insensitive) and the match ends on a boundary:
 * the entry ends with a non-unreserved character ('/', '?', '=', ...) or the path ends or
 * continues with one. `/forbidden` matches `/forbidden`, `/forbidden/x`, `/forbidden?a`, not
 * `/forbiddenx` nor `/forbidden.html`.
 */
function pathMatches(path: string, blob: Uint8Array, off: number, len: number): boolean {
  if (len === 1 && blob[off] === 47) return true;
  if (path.length < len) return false;
  for (let i = 0; i < len; i++) {
    let c = path.charCodeAt(i);
    if (c >= 65 && c <= 90) c |= 0x20;
    if (c !== blob[off + i]) return false;
  }
  if (path.length === len) return true;
  if (!isUnreserved(blob[off + len - 1]!)) return true;
  return !isUnreserved(path.charCodeAt(len));
}

export function loadIndexBuffer(buf: Buffer, what: string): ListIndex {
  return new ListIndex(buf, what);
}
