/**
 * Reader of UT1 blacklists (https://dsi.ut-capitole.fr/blacklists/): a directory, or the
 * upstream `blacklists.tar.gz`. Feeds an IndexBuilder (src/policy/index-builder.ts).
 *
 * Layout: one folder per category with `domains` (also `domains.0`, `domains.1`... when split
 * upstream), `urls`, `expressions`, `usage`; alias categories at the top are symbolic links
 * (`porn -> adult`) OR plain files whose content is the target name (how they survive copies
 * that do not keep links); `global_usage` gives French and English names.
 *
 * Line rules (all files): CRLF or LF, leading / trailing spaces and tabs ignored, blank lines
 * and lines starting with `#` ignored, trailing `# comment` after the entry ignored.
 *   domains      one host a line; upper case folded; leading dots and `*.` removed (`.x.com`
 *                means x.com and its subdomains, which every entry already does); IDN converted;
 *                IPv4 literals (any form) as dotted quads. Anything normaliseHost refuses is
 *                malformed.
 *   urls         host[/path][?query], optional scheme and port dropped; backslash escapes
 *                (`onionimp\.cgi\?`, copied from regex syntax) unescaped; path normalised as
 *                requests are (normalise.ts).
 *   expressions  POSIX extended regular expressions, converted to JavaScript (`[[:alpha:]]`
 *                classes); an expression that does not compile or that matches the empty string
 *                (it would block everything) is malformed.
 *   usage        `black` / `white` lines, every other line is an alias name.
 * Malformed lines are skipped, counted, and the first ones reported with file and line.
 * `adult/very_restrictive_expression` (opt-in word list) is not read.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as Tar from 'tar';
import { InputError, errorMessage } from '../errors';
import { hashBytesLower } from '../policy/hash';
import type { IndexBuilder } from '../policy/index-builder';
import type { Usage } from '../policy/index-format';
import { normaliseHost, parseListUrl } from '../policy/normalise';

/** A UT1 tree, from a directory or from a tar.gz held in memory. */
interface Tree {
  /** top-level names with their kind */
  top(): Array<{ name: string; kind: 'dir' | 'file' | 'link'; link?: string }>;
  /** names of the files in a top-level folder */
  files(dir: string): string[];
  read(rel: string): Buffer | null;
}

const MAX_FILE_BYTES = 1 << 30;

class DirTree implements Tree {
  constructor(private readonly root: string) {}

  top() {
    const out: Array<{ name: string; kind: 'dir' | 'file' | 'link'; link?: string }> = [];
    for (const d of fs.readdirSync(this.root, { withFileTypes: true })) {
      const full = path.join(this.root, d.name);
      if (d.isSymbolicLink()) out.push({ name: d.name, kind: 'link', link: fs.readlinkSync(full) });
      else if (d.isDirectory()) out.push({ name: d.name, kind: 'dir' });
      else if (d.isFile()) out.push({ name: d.name, kind: 'file' });
    }
    return out;
  }

  files(dir: string): string[] {
    // symlinked files are read through (a tree assembled from links to other trees)
    return fs.readdirSync(path.join(this.root, dir), { withFileTypes: true }).filter((d) => d.isFile() || d.isSymbolicLink()).map((d) => d.name);
  }

  read(rel: string): Buffer | null {
    try {
      return fs.readFileSync(path.join(this.root, rel));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new InputError(`reading list ${rel}: ${errorMessage(err)}`);
    }
  }
}

class MemTree implements Tree {
  constructor(
    private readonly entries: Map<string, Buffer>,
    private readonly links: Map<string, string>,
    private readonly dirs: Set<string>,
  ) {}

  top() {
    const out: Array<{ name: string; kind: 'dir' | 'file' | 'link'; link?: string }> = [];
    for (const d of this.dirs) if (!d.includes('/')) out.push({ name: d, kind: 'dir' });
    for (const [p, l] of this.links) if (!p.includes('/')) out.push({ name: p, kind: 'link', link: l });
    for (const p of this.entries.keys()) if (!p.includes('/')) out.push({ name: p, kind: 'file' });
    return out;
  }

  files(dir: string): string[] {
    const out: string[] = [];
    for (const p of this.entries.keys()) {
      const slash = p.indexOf('/');
      if (slash > 0 && p.slice(0, slash) === dir && p.indexOf('/', slash + 1) < 0) out.push(p.slice(slash + 1));
    }
    return out;
  }

  read(rel: string): Buffer | null {
    return this.entries.get(rel) ?? null;
  }
}

const LIST_FILE = /^(domains|urls|expressions|usage)(\.\d+)?$/;

/** Reads a UT1 tar.gz (any root folder: `blacklists/`, `./`, ...) into memory. */
async function readTarball(file: string): Promise<Tree> {
  const raw = new Map<string, Buffer>();
  const rawLinks = new Map<string, string>();
  // loaded here, not at the top: `serve` reads compiled indexes and never needs it at start
  const tar = require('tar') as typeof Tar;
  try {
    await tar.t({
      file,
      onReadEntry: (entry) => {
        const p = entry.path.replace(/^\.\//, '').replace(/\/+$/, '');
        if (entry.type === 'SymbolicLink') {
          rawLinks.set(p, entry.linkpath ?? '');
          entry.resume();
          return;
        }
        if ((entry.type !== 'File' && entry.type !== 'OldFile' && entry.type !== 'ContiguousFile') || (entry.size ?? 0) > MAX_FILE_BYTES) {
          entry.resume();
          return;
        }
        const chunks: Buffer[] = [];
        entry.on('data', (c: Buffer) => chunks.push(c));
        entry.on('end', () => raw.set(p, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
      },
    });
  } catch (err) {
    throw new InputError(`reading lists archive ${file}: ${errorMessage(err)}`);
  }
  // root = the folder that holds the category folders (most common one)
  const roots = new Map<string, number>();
  for (const p of raw.keys()) {
    const parts = p.split('/');
    if (parts.length >= 2 && LIST_FILE.test(parts[parts.length - 1]!)) {
      const r = parts.slice(0, -2).join('/');
      roots.set(r, (roots.get(r) ?? 0) + 1);
    }
  }
  if (roots.size === 0) throw new InputError(`reading lists archive ${file}: no UT1 category (folder with domains, urls or usage) found`);
  const root = [...roots.entries()].sort((a, b) => b[1] - a[1])[0]![0];
  const strip = (p: string) => (root === '' ? p : p.startsWith(root + '/') ? p.slice(root.length + 1) : null);
  const entries = new Map<string, Buffer>();
  const links = new Map<string, string>();
  const dirs = new Set<string>();
  for (const [p, b] of raw) {
    const rel = strip(p);
    if (rel === null) continue;
    entries.set(rel, b);
    const slash = rel.indexOf('/');
    if (slash > 0) dirs.add(rel.slice(0, slash));
  }
  for (const [p, l] of rawLinks) {
    const rel = strip(p);
    if (rel !== null) links.set(rel, l);
  }
  return new MemTree(entries, links, dirs);
}

export interface ReadStats {
  categories: number;
  files: number;
  lines: number;
}

/** Opens a UT1 source: a directory or a .tar.gz / .tgz file. */
export async function openUt1(src: string): Promise<Tree> {
  let st: fs.Stats;
  try {
    st = fs.statSync(src);
  } catch (err) {
    throw new InputError(`reading lists ${src}: ${errorMessage(err)}`);
  }
  if (st.isDirectory()) return new DirTree(src);
  return readTarball(src);
}

/** Reads a whole UT1 tree into `b`. */
export async function readUt1(src: string, b: IndexBuilder): Promise<ReadStats> {
  const tree = await openUt1(src);
  const stats: ReadStats = { categories: 0, files: 0, lines: 0 };
  const top = tree.top().sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  const dirs = top.filter((e) => e.kind === 'dir');
  for (const d of dirs) {
    const files = tree.files(d.name).filter((f) => LIST_FILE.test(f)).sort();
    if (files.length === 0) continue; // not a category (e.g. a docs folder)
    const cat = b.category(d.name);
    stats.categories++;
    for (const f of files) {
      const rel = `${d.name}/${f}`;
      const buf = tree.read(rel);
      if (buf === null) continue;
      stats.files++;
      if (f.startsWith('domains')) stats.lines += readDomains(buf, cat, rel, b);
      else if (f.startsWith('urls')) stats.lines += readUrls(buf, cat, rel, b);
      else if (f.startsWith('expressions')) stats.lines += readExpressions(buf, cat, rel, b);
      else readUsage(buf, cat, d.name, b);
    }
  }
  // aliases at the top: symlinks, or small plain files naming a category
  for (const e of top) {
    if (e.kind === 'dir') continue;
    let target: string | null = null;
    if (e.kind === 'link') {
      target = path.posix.basename((e.link ?? '').replace(/\\/g, '/').replace(/\/+$/, ''));
    } else {
      const buf = tree.read(e.name);
      if (buf !== null && buf.length > 0 && buf.length < 256) {
        const t = buf.toString('utf8').trim();
        if (/^[A-Za-z0-9_.-]+$/.test(t)) target = t;
      }
    }
    if (target === null) continue;
    const idx = b.categoryIndex(target);
    if (idx === undefined || b.categoryIndex(e.name) !== undefined) continue;
    b.aliases.set(e.name, target);
    const meta = b.categories[idx]!;
    if (!meta.aliases.includes(e.name)) meta.aliases.push(e.name);
  }
  const gu = tree.read('global_usage');
  if (gu !== null) applyGlobalUsage(gu, b);
  return stats;
}

// ---- line scanning ----------------------------------------------------------------------

function isBlank(c: number): boolean {
  return c === 32 || c === 9 || c === 13 || c === 11 || c === 12;
}

/**
 * Calls fn(start, end, lineNo) for each line with content: trimmed, not blank, not a comment,
 * cut at the first blank (anything after it must be a `#` comment, else the line is reported).
 */
function eachEntry(b: Buffer, file: string, builder: IndexBuilder, firstTokenOnly: boolean, fn: (s: number, e: number, line: number) => void): number {
  const n = b.length;
  let pos = 0;
  let lineNo = 0;
  let count = 0;
  // skip a UTF-8 byte order mark
  if (n >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) pos = 3;
  while (pos < n) {
    let end = b.indexOf(10, pos);
    if (end < 0) end = n;
    lineNo++;
    let s = pos;
    let e = end;
    pos = end + 1;
    while (s < e && isBlank(b[s]!)) s++;
    while (e > s && isBlank(b[e - 1]!)) e--;
    if (s === e || b[s] === 35 /* # */) continue;
    if (firstTokenOnly) {
      let w = s;
      while (w < e && !isBlank(b[w]!)) w++;
      if (w < e) {
        let r = w;
        while (r < e && isBlank(b[r]!)) r++;
        if (b[r] !== 35) {
          builder.reportMalformed(file, lineNo, b.toString('utf8', s, e), 'several fields on one line');
          continue;
        }
        e = w;
      }
    }
    count++;
    fn(s, e, lineNo);
  }
  return count;
}

const keyTmp = new Int32Array(2);

/**
 * Domains: the common line (ASCII letters, digits, '-', '_', '.', labels well formed, last
 * label not numeric) is hashed straight from the bytes; any other goes through normaliseHost.
 */
function readDomains(buf: Buffer, cat: number, file: string, b: IndexBuilder): number {
  let newlines = 0;
  for (let i = buf.indexOf(10); i >= 0; i = buf.indexOf(10, i + 1)) newlines++;
  b.reserve(newlines + 1);
  return eachEntry(buf, file, b, true, (s, e, line) => {
    // leading dots and "*." mean "this domain and its subdomains": what every entry means
    for (;;) {
      if (buf[s] === 46) s++;
      else if (buf[s] === 42 && buf[s + 1] === 46) s += 2;
      else break;
    }
    if (s < e && fastDomain(buf, s, e)) {
      hashBytesLower(buf, s, e, keyTmp);
      b.addDomainKey(keyTmp[0]!, keyTmp[1]!, cat);
      return;
    }
    const text = buf.toString('utf8', s, e);
    const host = s < e ? normaliseHost(text) : null;
    if (host === null) {
      b.reportMalformed(file, line, buf.toString('utf8', s, e) || '(empty)', 'not a valid host name');
      return;
    }
    b.addDomain(host, cat);
  });
}

/** True when bytes [s, e) are a clean ASCII name (upper case allowed) needing no conversion. */
function fastDomain(b: Buffer, s: number, e: number): boolean {
  if (e - s > 253) return false;
  let labelStart = s;
  let digitsOnly = true;
  for (let i = s; i < e; i++) {
    let c = b[i]!;
    if (c === 46) {
      if (i === labelStart || i - labelStart > 63) return false;
      labelStart = i + 1;
      digitsOnly = true;
      continue;
    }
    if (c >= 65 && c <= 90) c |= 0x20;
    if (c >= 48 && c <= 57) continue;
    digitsOnly = false;
    if (!((c >= 97 && c <= 122) || c === 45 || c === 95)) return false;
  }
  if (labelStart === e || e - labelStart > 63) return false;
  if (digitsOnly) return false; // IPv4 literal: slow path normalises its form
  // 0x-prefixed last label reads as a hex number (WHATWG): slow path
  if (e - labelStart >= 2 && b[labelStart] === 48 && (b[labelStart + 1]! | 0x20) === 120) return false;
  return true;
}

function readUrls(buf: Buffer, cat: number, file: string, b: IndexBuilder): number {
  return eachEntry(buf, file, b, true, (s, e, line) => {
    const text = buf.toString('utf8', s, e);
    const u = parseListUrl(text);
    if (u === null) {
      b.reportMalformed(file, line, text, 'not a valid host/path entry');
      return;
    }
    b.addUrl(u.host, u.path, cat);
  });
}

const POSIX_CLASSES: Record<string, string> = {
  alpha: 'a-zA-Z', digit: '0-9', alnum: 'a-zA-Z0-9', upper: 'A-Z', lower: 'a-z', space: '\\s',
  blank: ' \\t', punct: '!-\\/:-@\\[-`{-~', xdigit: '0-9A-Fa-f', word: '\\w', cntrl: '\\x00-\\x1f',
  print: ' -~', graph: '!-~',
};

/** POSIX ERE (as UT1 writes them) to a JavaScript RegExp source; null when it cannot be. */
export function posixToJs(src: string): string | null {
  const out = src.replace(/\[:([a-z]+):\]/g, (m, name: string) => POSIX_CLASSES[name] ?? m);
  if (/\[:[a-z]+:\]/.test(out)) return null;
  try {
    const re = new RegExp(out, 'i');
    if (re.test('')) return null; // would match every url
  } catch {
    return null;
  }
  return out;
}

function readExpressions(buf: Buffer, cat: number, file: string, b: IndexBuilder): number {
  return eachEntry(buf, file, b, false, (s, e, line) => {
    const text = buf.toString('utf8', s, e);
    const js = posixToJs(text);
    if (js === null) {
      b.reportMalformed(file, line, text, 'not a usable regular expression');
      return;
    }
    b.addExpression(cat, js);
  });
}

function readUsage(buf: Buffer, cat: number, name: string, b: IndexBuilder): void {
  const meta = b.categories[cat]!;
  for (const raw of buf.toString('utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const l = line.toLowerCase();
    if (l === 'black' || l === 'white') {
      if (!meta.usage.includes(l as Usage)) meta.usage.push(l as Usage);
    } else if (l !== name && !meta.aliases.includes(l)) {
      meta.aliases.push(l);
      if (!b.aliases.has(l)) b.aliases.set(l, name);
    }
  }
}

/** global_usage: blocks of `KEY: value` lines starting at `NAME:`. */
function applyGlobalUsage(buf: Buffer, b: IndexBuilder): void {
  let current: number | undefined;
  for (const raw of buf.toString('utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Z_]+(?: [A-Z]{2})?)\s*:\s*(.*)$/.exec(line);
    if (!m) continue;
    const key = m[1]!;
    const value = m[2]!.trim();
    if (key === 'NAME') {
      current = b.categoryIndex(value) ?? (b.aliases.has(value) ? b.categoryIndex(b.aliases.get(value)!) : undefined);
      continue;
    }
    if (current === undefined || value === '') continue;
    const meta = b.categories[current]!;
    if (key === 'NAME FR' && meta.fr === null) meta.fr = value;
    else if (key === 'NAME EN' && meta.en === null) meta.en = value;
    else if (key === 'DESC FR' && meta.descFr === null) meta.descFr = value;
    else if (key === 'DESC EN' && meta.descEn === null) meta.descEn = value;
  }
}
