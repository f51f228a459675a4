/**
 * 64-bit host keys, computed right to left so that one pass over a host yields the key of each
 * of its suffixes on label boundaries (`a.b.example.com` -> `com`, `example.com`,
 * `b.example.com`, `a.b.example.com`) without slicing a string.
 *
 * Two 32-bit lanes with different multipliers (FNV-1a and a murmur-style step), each mixed with
 * the suffix length and finalised with murmur3's fmix32. 64 bits: at 10 M entries the chance
 * that any request suffix collides with an entry is about 10^7 / 2^64 per lookup.
 * `lo` is never 0: 0 marks an empty slot in the tables. Keys are signed 32-bit integers (Int32Array)
 * so that V8 keeps them as small integers: an unsigned value over 2^31 would be boxed as a heap
 * number on every call, i.e. an allocation per lookup.
 *
 * The same code hashes list entries at compile time (bytes or strings) and hosts at lookup
 * time: any change here changes the index format (bump FORMAT_VERSION in index-format.ts).
 */

export const SEED1 = 0x811c9dc5;
export const SEED2 = 0x9747b28c;

export function step1(h: number, c: number): number {
  return Math.imul(h ^ c, 0x01000193);
}

export function step2(h: number, c: number): number {
  h = Math.imul(h ^ c, 0x5bd1e995);
  return h ^ (h >>> 15);
}

export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

export function finalLo(h1: number, len: number): number {
  const lo = fmix32(h1 ^ Math.imul(len, 0x27d4eb2d));
  return lo === 0 ? 1 : lo;
}

export function finalHi(h2: number, len: number): number {
  return fmix32(h2 + len);
}

/** Key of a whole string (list entries at compile time, tests). Returns [lo, hi]. */
export function hashString(s: string, out: Int32Array): void {
  let h1 = SEED1;
  let h2 = SEED2;
  for (let i = s.length - 1; i >= 0; i--) {
    const c = s.charCodeAt(i);
    h1 = step1(h1, c);
    h2 = step2(h2, c);
  }
  out[0] = finalLo(h1, s.length);
  out[1] = finalHi(h2, s.length);
}

/** Key of bytes [from, to) of a buffer, ASCII upper case folded to lower case. */
export function hashBytesLower(b: Uint8Array, from: number, to: number, out: Int32Array): void {
  let h1 = SEED1;
  let h2 = SEED2;
  for (let i = to - 1; i >= from; i--) {
    let c = b[i]!;
    if (c >= 65 && c <= 90) c |= 0x20;
    h1 = step1(h1, c);
    h2 = step2(h2, c);
  }
  out[0] = finalLo(h1, to - from);
  out[1] = finalHi(h2, to - from);
}

/**
 * Open-addressing (linear probing) table of 64-bit keys: keys[2*i] = lo, keys[2*i+1] = hi,
 * lo === 0 means empty. Returns the slot of the key, or -1.
 */
export function findSlot(keys: Int32Array, cap: number, lo: number, hi: number): number {
  let i = (lo & 0x7fffffff) % cap;
  for (;;) {
    const k = keys[2 * i]!;
    if (k === 0) return -1;
    if (k === lo && keys[2 * i + 1] === hi) return i;
    if (++i === cap) i = 0;
  }
}

/** Inserts a key known to be absent; returns its slot. The table must have a free slot. */
export function insertSlot(keys: Int32Array, cap: number, lo: number, hi: number): number {
  let i = (lo & 0x7fffffff) % cap;
  while (keys[2 * i] !== 0) {
    if (++i === cap) i = 0;
  }
  keys[2 * i] = lo;
  keys[2 * i + 1] = hi;
  return i;
}

/** Capacity for `n` keys at a load factor of about 0.65 (misses probe ~3 slots on average). */
export function capacityFor(n: number): number {
  return Math.max(8, Math.ceil(n / 0.65) + 1);
}
