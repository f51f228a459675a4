/**
 * Small sets of allow / deny entries from the policy file (DASEN mandatory entries, local school
 * entries, per-profile entries): `example.org` (the domain and its subdomains), `example.org/path`
 * (host and path prefix on a segment boundary), IPv4 / IPv6 literals (exact).
 *
 * Hundreds of entries at most, so a Map keyed by the low half of the 64-bit suffix key
 * (hash.ts) is enough; the lookup walks the host right to left like the list index and
 * allocates nothing.
 */
import { finalHi, finalLo, hashString, SEED1, SEED2, step1, step2 } from './hash';
import { isIPv4Literal, parseListUrl } from './normalise';

interface Bucket {
  hi: number;
  host: string;
  /** true: the whole host (and subdomains); else only `paths` */
  whole: boolean;
  /** lower-case paths, each with its display text */
  paths: Array<{ path: string; text: string }>;
}

export class EntrySet {
  private readonly byLo = new Map<number, Bucket[]>();
  readonly size: number;
  private readonly tmp = new Int32Array(2);

  /** `entries` must be valid (see parseEntry); the caller reports bad ones with their key. */
  constructor(entries: ReadonlyArray<{ host: string; path: string }>) {
    for (const e of entries) {
      hashString(e.host, this.tmp);
      const lo = this.tmp[0]!;
      const hi = this.tmp[1]!;
      let list = this.byLo.get(lo);
      if (!list) {
        list = [];
        this.byLo.set(lo, list);
      }
      let b = list.find((x) => x.hi === hi && x.host === e.host);
      if (!b) {
        b = { hi, host: e.host, whole: false, paths: [] };
        list.push(b);
      }
      if (e.path === '/') b.whole = true;
      else b.paths.push({ path: e.path.toLowerCase(), text: e.host + e.path });
    }
    this.size = entries.length;
  }

  /**
   * The entry matching host (+ path for http; '' for CONNECT), or null. Most specific host
   * first. Returns the entry's text (a string already held: no allocation).
   */
  match(host: string, path: string): string | null {
    if (this.size === 0) return null;
    const n = host.length;
    if (n === 0) return null;
    const literal = host.indexOf(':') >= 0 || (host.charCodeAt(n - 1) <= 57 && isIPv4Literal(host));
    let h1 = SEED1;
    let h2 = SEED2;
    let found: string | null = null;
    for (let i = n - 1; i >= 0; i--) {
      const c = host.charCodeAt(i);
      if (c === 46 && !literal) {
        const r = this.probe(finalLo(h1, n - i - 1), finalHi(h2, n - i - 1), path);
        if (r !== null) found = r; // keep walking: a longer (more specific) suffix wins
      }
      h1 = step1(h1, c);
      h2 = step2(h2, c);
    }
    const r = this.probe(finalLo(h1, n), finalHi(h2, n), path);
    return r ?? found;
  }

  private probe(lo: number, hi: number, path: string): string | null {
    const list = this.byLo.get(lo);
    if (list === undefined) return null;
    for (const b of list) {
      if (b.hi !== hi) continue;
      if (b.whole) return b.host;
      for (const p of b.paths) if (pathPrefix(path, p.path)) return p.text;
    }
    return null;
  }
}

function isUnreserved(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95 || c === 126;
}

/** Same boundary rule as list url entries (list-index.ts pathMatches). */
function pathPrefix(path: string, entry: string): boolean {
  const len = entry.length;
  if (path.length < len) return false;
  for (let i = 0; i < len; i++) {
    let c = path.charCodeAt(i);
    if (c >= 65 && c <= 90) c |= 0x20;
    if (c !== entry.charCodeAt(i)) return false;
  }
  if (path.length === len) return true;
  if (!isUnreserved(entry.charCodeAt(len - 1))) return true;
  return !isUnreserved(path.charCodeAt(len));
}

/** Parses one policy entry; null when it is not a host or host/path. */
export function parseEntry(text: string): { host: string; path: string } | null {
  const t = text.trim();
  if (t === '' || /\s/.test(t)) return null;
  return parseListUrl(t);
}
