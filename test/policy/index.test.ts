/**
 * The compiled index: serialise / parse round trip, refusal of damaged or foreign files with
 * "expected X, got Y", and a seeded fuzz test against a plain Map/Set implementation (random
 * inputs, and real UT1 domains when ../shared/ut1 is present).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { PACKAGE_ROOT } from '../../src/config';
import { IndexBuilder } from '../../src/policy/index-builder';
import { FORMAT_VERSION, IndexFormatError, parseIndex, PRELUDE_BYTES } from '../../src/policy/index-format';
import { ListIndex } from '../../src/policy/list-index';
import { isIPv4Literal, normaliseHost } from '../../src/policy/normalise';

const REAL_UT1 = path.join(PACKAGE_ROOT, '..', 'shared', 'ut1', 'blacklists');

/** mulberry32: small seeded PRNG, so a failure replays exactly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function small(): { buf: Buffer; b: IndexBuilder } {
  const b = new IndexBuilder();
  const adult = b.category('adult');
  const games = b.category('games');
  b.addDomain('blocked.test', adult);
  b.addDomain('blocked.test', games);
  b.addDomain('203.0.113.7', adult);
  b.addUrl('mixed.test', '/forbidden', adult);
  b.addExpression(games, 'casino[0-9]+');
  return { buf: b.serialize('unit'), b };
}

t.test('round trip: what is written is what is read', async (t) => {
  const { buf } = small();
  const { header, sections } = parseIndex(buf, 'mem');
  t.equal(header.version, FORMAT_VERSION);
  t.same(header.categories.map((c) => [c.name, c.domains, c.urls, c.expressions]), [['adult', 2, 1, 0], ['games', 1, 0, 1]]);
  t.equal(header.domains.count, 2);
  t.equal(header.urls.entries, 1);
  t.same(header.expressions, [{ category: 1, source: 'casino[0-9]+' }]);
  t.equal(sections.dkeys.length, header.domains.capacity * 2);
  const idx = new ListIndex(buf, 'mem');
  t.same(idx.exactCategories('blocked.test'), [0, 1]);
  t.same(idx.exactCategories('203.0.113.7'), [0]);
  t.same(idx.exactCategories('other.test'), []);
  // serialising the same content twice gives the same sections (only `created` differs)
  const again = small().buf;
  t.equal(again.length, buf.length);
  const h2 = parseIndex(again, 'mem').header;
  t.same({ ...h2, created: '' }, { ...header, created: '' });
});

t.test('damaged or foreign files are refused with expected / got', async (t) => {
  const { buf } = small();
  const flip = Buffer.from(buf);
  flip[flip.length - 1]! ^= 0xff;
  t.throws(() => parseIndex(flip, 'f'), { code: 'GARDEFOU_INDEX', message: /checksum: expected crc32 0x[0-9a-f]{8}, got 0x[0-9a-f]{8}/ });
  const trunc = buf.subarray(0, buf.length - 8);
  t.throws(() => parseIndex(Buffer.from(trunc), 'f'), { message: /checksum: expected crc32/ });
  const ver = Buffer.from(buf);
  ver.writeUInt32LE(99, 8);
  t.throws(() => parseIndex(ver, 'f'), { message: `reading index f: format version: expected ${FORMAT_VERSION}, got 99 (recompile with gardefou lists import)` });
  const magic = Buffer.from(buf);
  magic.write('NOTANIDX', 0, 'latin1');
  t.throws(() => parseIndex(magic, 'f'), { message: /expected magic "GFINDEX\\n", got "NOTANIDX"/ });
  t.throws(() => parseIndex(Buffer.alloc(10), 'f'), { message: /file too short/ });
  t.throws(() => parseIndex(buf.subarray(0, PRELUDE_BYTES), 'f'), IndexFormatError);
  // a buffer that is not 8-aligned in its ArrayBuffer still loads
  const shifted = Buffer.alloc(buf.length + 3);
  buf.copy(shifted, 3);
  t.same(new ListIndex(shifted.subarray(3), 'shifted').exactCategories('blocked.test'), [0, 1]);
});

/** Reference: every suffix of `host` (on label boundaries, IP literals whole) found in `ref`. */
function referenceHits(ref: Map<string, Set<number>>, host: string): Array<[number, number[]]> {
  const out: Array<[number, number[]]> = [];
  if (isIPv4Literal(host) || host.includes(':')) {
    const s = ref.get(host);
    if (s) out.push([0, [...s].sort((a, b) => a - b)]);
    return out;
  }
  const starts: number[] = [];
  for (let i = host.length - 1; i >= 0; i--) if (host[i] === '.') starts.push(i + 1);
  starts.push(0);
  for (const st of starts) {
    const s = ref.get(host.slice(st));
    if (s) out.push([st, [...s].sort((a, b) => a - b)]);
  }
  return out;
}

function indexHits(idx: ListIndex, host: string): Array<[number, number[]]> {
  const n = idx.collect(host);
  const out: Array<[number, number[]]> = [];
  for (let k = 0; k < n; k++) if (idx.hitSet[k] !== 0) out.push([idx.hitStart[k]!, idx.setMembers(idx.hitSet[k]!)]);
  return out;
}

function build(entries: Array<[string, number]>, categories: number): { idx: ListIndex; ref: Map<string, Set<number>> } {
  const b = new IndexBuilder();
  for (let c = 0; c < categories; c++) b.category(`c${c}`);
  const ref = new Map<string, Set<number>>();
  for (const [host, cat] of entries) {
    b.addDomain(host, cat);
    let s = ref.get(host);
    if (!s) ref.set(host, (s = new Set()));
    s.add(cat);
  }
  return { idx: new ListIndex(b.serialize('fuzz'), 'fuzz'), ref };
}

t.test('fuzz: random hosts, 70 categories, index answers like a Map', async (t) => {
  const seed = 20260907;
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const alphabet = ['a', 'b', 'c', 'ab', 'ba', 'x-y', '0', '1a', 'xn--bcher-kva'];
  const tlds = ['test', 'example', 'fr', 'b'];
  const host = (): string => {
    if (r() < 0.05) return `${Math.floor(r() * 256)}.${Math.floor(r() * 256)}.${Math.floor(r() * 4)}.${Math.floor(r() * 4)}`;
    const depth = 1 + Math.floor(r() * 4);
    const labels: string[] = [];
    for (let i = 0; i < depth; i++) labels.push(pick(alphabet) + (r() < 0.3 ? pick(alphabet) : ''));
    return `${labels.join('.')}.${pick(tlds)}`;
  };
  const CATS = 70;
  const entries: Array<[string, number]> = [];
  for (let i = 0; i < 30000; i++) entries.push([host(), Math.floor(r() * CATS)]);
  const { idx, ref } = build(entries, CATS);
  t.equal(idx.header.domains.count, ref.size, 'distinct domains counted once');
  let mismatches = 0;
  let hits = 0;
  const listed = [...ref.keys()];
  for (let i = 0; i < 40000; i++) {
    const q = i % 3 === 0 ? `${pick(alphabet)}.${pick(listed)}` : i % 3 === 1 ? host() : `x${pick(listed)}`;
    const want = referenceHits(ref, q);
    const got = indexHits(idx, q);
    if (want.length > 0) hits++;
    if (JSON.stringify(want) !== JSON.stringify(got)) {
      mismatches++;
      if (mismatches < 5) t.same(got, want, `seed ${seed} query ${q}`);
    }
    // mask questions: one random category mask
    const mask = idx.newMask();
    const c = Math.floor(r() * CATS);
    mask[c >>> 5] = 1 << (c & 31);
    const wantMatch = want.some(([, cats]) => cats.includes(c));
    if (idx.domainMatch(idx.collect(q), mask) !== wantMatch) {
      mismatches++;
      if (mismatches < 5) t.fail(`seed ${seed} query ${q} category ${c}: domainMatch should be ${wantMatch}`);
    }
  }
  t.equal(mismatches, 0, `no mismatch over 40000 queries (${hits} with hits), seed ${seed}`);
  t.ok(hits > 1000, 'the queries do exercise hits');
});

t.test('fuzz: real UT1 domains', { skip: fs.existsSync(REAL_UT1) ? false : '../shared/ut1 not present' }, async (t) => {
  const r = rng(7);
  const entries: Array<[string, number]> = [];
  const cats = ['gambling', 'vpn', 'dating', 'bank', 'shortener', 'doh', 'dynamic-dns'];
  cats.forEach((c, ci) => {
    const text = fs.readFileSync(path.join(REAL_UT1, c, 'domains'), 'utf8');
    for (const line of text.split('\n')) {
      const h = normaliseHost(line.trim().replace(/^\.+/, ''));
      if (h !== null) entries.push([h, ci]);
    }
  });
  const { idx, ref } = build(entries, cats.length);
  const listed = [...ref.keys()];
  let mismatches = 0;
  for (let i = 0; i < 30000; i++) {
    const base = listed[Math.floor(r() * listed.length)]!;
    const q = i % 4 === 0 ? base : i % 4 === 1 ? `www.${base}` : i % 4 === 2 ? `x${base}` : base.split('.').slice(1).join('.') || base;
    if (JSON.stringify(referenceHits(ref, q)) !== JSON.stringify(indexHits(idx, q))) {
      mismatches++;
      if (mismatches < 5) t.same(indexHits(idx, q), referenceHits(ref, q), q);
    }
  }
  t.equal(mismatches, 0, `${entries.length} real entries, 30000 queries, no mismatch`);
});

t.test('more than 32 categories: sets span several words', async (t) => {
  const b = new IndexBuilder();
  for (let c = 0; c < 100; c++) b.category(`c${c}`);
  b.addDomain('many.test', 3);
  b.addDomain('many.test', 40);
  b.addDomain('many.test', 99);
  const idx = new ListIndex(b.serialize('t'), 't');
  t.equal(idx.words, 4);
  t.same(idx.exactCategories('many.test'), [3, 40, 99]);
  const mask = idx.newMask();
  mask[99 >>> 5] = 1 << (99 & 31);
  t.ok(idx.domainMatch(idx.collect('a.many.test'), mask));
  t.equal(idx.matchCategory, 99);
  t.equal(idx.matchStart, 2);
});

t.test('the miss path allocates nothing measurable', async (t) => {
  const { buf } = small();
  const idx = new ListIndex(buf, 'mem');
  const hosts = ['www.example.com', 'a.b.c.d.e.f.example.org', 'img.static.cdn.net', '192.0.2.1'];
  for (let i = 0; i < 20000; i++) idx.collect(hosts[i & 3]!); // warm up (JIT)
  const before = process.memoryUsage().heapUsed;
  let n = 0;
  for (let i = 0; i < 200000; i++) n += idx.collect(hosts[i & 3]!);
  const grown = process.memoryUsage().heapUsed - before;
  t.equal(n, 0);
  // 200k lookups allocating even 16 bytes each would grow the heap by 3 MB
  t.ok(grown < 1_000_000, `heap grew by ${grown} bytes over 200000 lookups`);
});
