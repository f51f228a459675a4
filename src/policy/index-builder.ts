/**
 * Builds the compiled index (index-format.ts) from entries the list reader feeds it.
 *
 * Domains go straight into an open-addressing table of 64-bit keys whose value is a
 * category-set id; sets are interned (a domain in adult and in mixed_adult shares one set id
 * with every other such domain), so a compile of millions of lines creates no per-entry object.
 * The table grows by doubling while building and is rebuilt at its final size by serialize().
 * URL entries (tens of thousands) and expressions (hundreds) are kept as plain objects.
 */
import { capacityFor, findSlot, hashString, insertSlot } from './hash';
import {
  CategoryMeta, FORMAT_VERSION, IndexHeader, IndexSections, Malformed, serializeIndex,
} from './index-format';

const MAX_SETS = 65535;

export class IndexBuilder {
  readonly categories: CategoryMeta[] = [];
  private readonly byName = new Map<string, number>();
  readonly aliases = new Map<string, string>();
  readonly malformed: Malformed[] = [];
  malformedCount = 0;
  maxReported = 20;

  // domain table while building
  private cap = 1024;
  private keys = new Int32Array(2 * 1024);
  private vals = new Uint32Array(1024);
  private count = 0;
  // category sets: id -> sorted category indices; key "1,5,9" -> id; (id, cat) -> id
  private readonly sets: number[][] = [[]];
  private readonly setIds = new Map<string, number>([['', 0]]);
  private readonly transitions = new Map<number, number>();

  // url entries: host -> entries
  private readonly urls = new Map<string, Array<{ cat: number; path: string }>>();
  private readonly expressions: Array<{ category: number; source: string }> = [];
  private readonly tmp = new Int32Array(2);

  category(name: string): number {
    const got = this.byName.get(name);
    if (got !== undefined) return got;
    const idx = this.categories.length;
    this.categories.push({ name, fr: null, en: null, descFr: null, descEn: null, usage: [], aliases: [], domains: 0, urls: 0, expressions: 0 });
    this.byName.set(name, idx);
    return idx;
  }

  categoryIndex(name: string): number | undefined {
    return this.byName.get(name);
  }

  reportMalformed(file: string, line: number, text: string, reason: string): void {
    this.malformedCount++;
    if (this.malformed.length < this.maxReported) this.malformed.push({ file, line, text: text.slice(0, 120), reason });
  }

  /** Makes room for `n` more domains (avoids repeated doubling on big files). */
  reserve(n: number): void {
    const need = this.count + n;
    if (need * 2 > this.cap) this.grow(Math.max(this.cap * 2, need * 2));
  }

  /** Adds a normalised domain / IP literal to category `cat`. */
  addDomain(host: string, cat: number): void {
    hashString(host, this.tmp);
    this.addDomainKey(this.tmp[0]!, this.tmp[1]!, cat);
  }

  /** Adds a domain by its key (hash.ts) to category `cat`. */
  addDomainKey(lo: number, hi: number, cat: number): void {
    if (this.count * 2 >= this.cap) this.grow(this.cap * 2);
    let slot = findSlot(this.keys, this.cap, lo, hi);
    let from = 0;
    if (slot < 0) {
      slot = insertSlot(this.keys, this.cap, lo, hi);
      this.count++;
    } else {
      from = this.vals[slot]!;
    }
    const to = this.withCategory(from, cat);
    if (to !== from) {
      this.vals[slot] = to;
      const meta = this.categories[cat];
      if (meta) meta.domains++;
    }
  }

  private withCategory(set: number, cat: number): number {
    const tkey = set * 4096 + cat;
    const cached = this.transitions.get(tkey);
    if (cached !== undefined) return cached;
    const members = this.sets[set]!;
    let id: number;
    if (members.includes(cat)) {
      id = set;
    } else {
      const next = [...members, cat].sort((a, b) => a - b);
      const key = next.join(',');
      const existing = this.setIds.get(key);
      if (existing !== undefined) {
        id = existing;
      } else {
        id = this.sets.length;
        if (id > MAX_SETS) throw new Error(`more than ${MAX_SETS} distinct category combinations`);
        this.sets.push(next);
        this.setIds.set(key, id);
      }
    }
    this.transitions.set(tkey, id);
    return id;
  }

  private grow(newCap: number): void {
    const oldKeys = this.keys;
    const oldVals = this.vals;
    const oldCap = this.cap;
    this.cap = newCap;
    this.keys = new Int32Array(2 * newCap);
    this.vals = new Uint32Array(newCap);
    for (let i = 0; i < oldCap; i++) {
      const lo = oldKeys[2 * i]!;
      if (lo === 0) continue;
      const s = insertSlot(this.keys, newCap, lo, oldKeys[2 * i + 1]!);
      this.vals[s] = oldVals[i]!;
    }
  }

  /** Adds a url entry: normalised host and normalised path ('/'-prefixed, with query). */
  addUrl(host: string, path: string, cat: number): void {
    const p = path.toLowerCase();
    let list = this.urls.get(host);
    if (!list) {
      list = [];
      this.urls.set(host, list);
    }
    for (const e of list) if (e.cat === cat && e.path === p) return;
    list.push({ cat, path: p });
    const meta = this.categories[cat];
    if (meta) meta.urls++;
  }

  addExpression(cat: number, source: string): void {
    this.expressions.push({ category: cat, source });
    const meta = this.categories[cat];
    if (meta) meta.expressions++;
  }

  get domainCount(): number {
    return this.count;
  }

  /** Builds the final file bytes. */
  serialize(source: string): Buffer {
    const C = this.categories.length;
    const W = Math.max(1, Math.ceil(C / 32));
    // domain table at its final size
    const dcap = capacityFor(this.count);
    const dkeys = new Int32Array(2 * dcap);
    const dvals = new Uint16Array(dcap);
    for (let i = 0; i < this.cap; i++) {
      const lo = this.keys[2 * i]!;
      if (lo === 0) continue;
      const s = insertSlot(dkeys, dcap, lo, this.keys[2 * i + 1]!);
      dvals[s] = this.vals[i]!;
    }
    const sets = new Uint32Array(this.sets.length * W);
    this.sets.forEach((members, id) => {
      for (const c of members) sets[id * W + (c >>> 5)]! |= 1 << (c & 31);
    });
    // url tables
    const hosts = [...this.urls.keys()];
    const ucap = capacityFor(hosts.length);
    const ukeys = new Int32Array(2 * ucap);
    const uvals = new Uint32Array(ucap);
    const ugroups = new Uint32Array(2 * hosts.length);
    let nEntries = 0;
    let blobBytes = 0;
    for (const list of this.urls.values()) {
      nEntries += list.length;
      for (const e of list) blobBytes += Buffer.byteLength(e.path, 'utf8');
    }
    const uentries = new Uint32Array(3 * nEntries);
    const ublob = new Uint8Array(blobBytes);
    let e = 0;
    let off = 0;
    hosts.forEach((host, g) => {
      hashString(host, this.tmp);
      const slot = insertSlot(ukeys, ucap, this.tmp[0]!, this.tmp[1]!);
      uvals[slot] = g;
      const list = this.urls.get(host)!;
      // longest paths first: the most specific entry is the one reported
      list.sort((a, b) => b.path.length - a.path.length);
      ugroups[2 * g] = e;
      ugroups[2 * g + 1] = list.length;
      for (const entry of list) {
        const n = Buffer.from(ublob.buffer, ublob.byteOffset + off, blobBytes - off).write(entry.path, 'utf8');
        uentries[3 * e] = entry.cat;
        uentries[3 * e + 1] = off;
        uentries[3 * e + 2] = n;
        off += n;
        e++;
      }
    });
    const aliases: Record<string, string> = {};
    for (const [a, c] of [...this.aliases.entries()].sort()) aliases[a] = c;
    const header: IndexHeader = {
      format: 'gardefou-index',
      version: FORMAT_VERSION,
      created: new Date().toISOString(),
      source,
      categories: this.categories,
      aliases,
      domains: { count: this.count, capacity: dcap, sets: this.sets.length, words: W },
      urls: { hosts: hosts.length, capacity: ucap, groups: hosts.length, entries: nEntries, blobBytes },
      expressions: this.expressions,
      filterBits: 0,
      malformed: { count: this.malformedCount, first: this.malformed },
      sections: {} as IndexHeader['sections'],
    };
    // presence filter over both key sets (list-index.ts probe)
    const filterBits = Math.max(64, Math.ceil(((this.count + hosts.length) * 10) / 32) * 32);
    const filter = new Uint32Array(filterBits / 32);
    for (const keys of [dkeys, ukeys]) {
      for (let i = 0; i < keys.length; i += 2) {
        if (keys[i] === 0) continue;
        const bit = (keys[i + 1]! & 0x7fffffff) % filterBits;
        filter[bit >>> 5]! |= 1 << (bit & 31);
      }
    }
    header.filterBits = filterBits;
    const sections: IndexSections = { dkeys, dvals, sets, ukeys, uvals, ugroups, uentries, ublob, filter };
    return serializeIndex(header, sections);
  }
}
