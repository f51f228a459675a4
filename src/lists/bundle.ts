/**
 * The DASEN bundle format: manifests (full and delta), the feed pointer, the strict ustar
 * writer/reader, and the line deltas. Shared by the DASEN side (feed.ts) and the gateway side
 * (update.ts); nothing here does network I/O.
 *
 * Feed folder layout (static files; anything a web server or CDN can serve as is):
 *
 *   feed.json                         signed pointer (envelope, see sign.ts), re-written last
 *   manifests/<serial>.json           signed manifest of one bundle, never rewritten
 *   bundles/<serial>-<sha256:16>.tar.gz   full bundle: content-addressed, cacheable forever
 *   deltas/<serial>-<sha256:16>.json.gz   delta over the full bundle named by its manifest
 *
 * Pointer payload (`gardefou-feed`):
 *   { type, format: 1, serial, created, expires,
 *     full:  { serial, manifest: { path, sha256, size } },
 *     delta: { serial, manifest: { path, sha256, size } } | null }
 *   `serial` is the newest state (the delta's when there is one), `expires` the newest
 *   manifest's. Deltas are cumulative over the full bundle, so a gateway needs the full
 *   bundle once and then only the latest delta.
 *
 * Full manifest payload (`gardefou-manifest`, kind "full"):
 *   { type, format: 1, kind: "full", serial, created, expires, keyids,
 *     archive: { path, sha256, size, unpackedSize },
 *     files: [ { path, sha256, size } ]   sorted by path; also the order inside the archive
 *     links: [ { path, link } ]           UT1 alias categories (porn -> adult), after the files
 *     categories: [ { name, domains, urls, expressions } ] }
 *   Paths are "lists/<UT1 path>" and "policy.json" (the DASEN policy).
 *
 * Delta manifest payload (kind "delta"): as above plus `base: { serial, manifestSha256 }`, with
 * `files` = every file the delta creates or changes (its resulting hash and size), `removed` =
 * paths it deletes, `categories` = the changed categories' new counts, `links` = [].
 * The delta archive is gzip(JSON):
 *   { type: "gardefou-delta", base, serial,
 *     edits:   [ { path, add: [line...], remove: [line...] } ]   line-set changes of domains/urls
 *     replace: [ { path, content: base64 } ] }                  any other new or changed file
 * Lines are carried as latin1 strings so every byte survives the JSON round trip.
 *
 * Archive layout: POSIX ustar, gzip-compressed, entries exactly in manifest order (files, then
 * symbolic links), no directory entries, mode 0644, uid/gid 0, mtime = manifest creation.
 * `tar tzf` reads it; the gateway's reader accepts nothing but that exact sequence.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { InputError } from '../errors';
import { isObject, Refusal, UpdateRefusedError } from './sign';

export const FORMAT = 1;
export const FEED_FILE = 'feed.json';
export const POLICY_PATH = 'policy.json';
export const LISTS_PREFIX = 'lists/';

export interface FileRef {
  path: string;
  sha256: string;
  size: number;
}
export interface LinkEntry {
  path: string;
  link: string;
}
export interface CategoryInfo {
  name: string;
  domains: number;
  urls: number;
  expressions: number;
}
export interface ArchiveRef extends FileRef {
  unpackedSize: number;
}

interface ManifestCommon {
  type: 'gardefou-manifest';
  format: 1;
  serial: number;
  created: string;
  expires: string;
  keyids: string[];
  archive: ArchiveRef;
  files: FileRef[];
  links: LinkEntry[];
  categories: CategoryInfo[];
}
export interface FullManifest extends ManifestCommon {
  kind: 'full';
}
export interface DeltaManifest extends ManifestCommon {
  kind: 'delta';
  base: { serial: number; manifestSha256: string };
  removed: string[];
}
export type Manifest = FullManifest | DeltaManifest;

export interface FeedPointer {
  type: 'gardefou-feed';
  format: 1;
  serial: number;
  created: string;
  expires: string;
  full: { serial: number; manifest: FileRef };
  delta: { serial: number; manifest: FileRef } | null;
}

export interface DeltaBody {
  type: 'gardefou-delta';
  base: number;
  serial: number;
  edits: Array<{ path: string; add: string[]; remove: string[] }>;
  replace: Array<{ path: string; content: string }>;
}

// ---------------------------------------------------------------------------------------------
// Validation of signed documents (after the signature holds: content is still checked field by
// field so a key compromise cannot crash or misdirect the gateway)

const SAFE_PATH = /^[A-Za-z0-9_][A-Za-z0-9._+-]*(\/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** A relative path that cannot escape its folder: no '..', no absolute, no odd characters. */
export function isSafePath(p: string): boolean {
  return p.length > 0 && p.length <= 240 && SAFE_PATH.test(p) && !p.split('/').some((c) => c === '.' || c === '..');
}

class Check {
  constructor(private readonly what: string) {}
  fail(field: string, msg: string): never {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${this.what}: field "${field}": ${msg}`);
  }
  obj(x: unknown, f: string): Record<string, unknown> {
    if (!isObject(x)) this.fail(f, 'expected an object');
    return x;
  }
  arr(x: unknown, f: string): unknown[] {
    if (!Array.isArray(x)) this.fail(f, 'expected a list');
    return x;
  }
  int(x: unknown, f: string, min = 0): number {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min) this.fail(f, `expected an integer >= ${min}`);
    return x;
  }
  str(x: unknown, f: string): string {
    if (typeof x !== 'string') this.fail(f, 'expected a string');
    return x;
  }
  time(x: unknown, f: string): string {
    const s = this.str(x, f);
    if (!/^\d{4}-\d\d-\d\dT/.test(s) || Number.isNaN(Date.parse(s))) this.fail(f, `expected an ISO time, got ${JSON.stringify(s).slice(0, 40)}`);
    return s;
  }
  hex(x: unknown, f: string): string {
    const s = this.str(x, f);
    if (!HEX64.test(s)) this.fail(f, 'expected 64 lower-case hex digits');
    return s;
  }
  safePath(x: unknown, f: string): string {
    const s = this.str(x, f);
    if (!isSafePath(s)) this.fail(f, `unsafe path ${JSON.stringify(s).slice(0, 60)}`);
    return s;
  }
  fileRef(x: unknown, f: string): FileRef {
    const o = this.obj(x, f);
    return { path: this.safePath(o['path'], `${f}.path`), sha256: this.hex(o['sha256'], `${f}.sha256`), size: this.int(o['size'], `${f}.size`) };
  }
}

export function parseManifest(doc: unknown, what = 'manifest'): Manifest {
  const c = new Check(what);
  const o = c.obj(doc, '(top)');
  if (o['type'] !== 'gardefou-manifest') c.fail('type', 'expected "gardefou-manifest"');
  if (o['format'] !== FORMAT) c.fail('format', `expected ${FORMAT}, got ${JSON.stringify(o['format'])}`);
  const kind = o['kind'];
  if (kind !== 'full' && kind !== 'delta') c.fail('kind', 'expected "full" or "delta"');
  const a = c.obj(o['archive'], 'archive');
  const common: ManifestCommon = {
    type: 'gardefou-manifest',
    format: FORMAT,
    serial: c.int(o['serial'], 'serial', 1),
    created: c.time(o['created'], 'created'),
    expires: c.time(o['expires'], 'expires'),
    keyids: c.arr(o['keyids'], 'keyids').map((k, i) => c.hex(k, `keyids[${i}]`)),
    archive: { ...c.fileRef(a, 'archive'), unpackedSize: c.int(a['unpackedSize'], 'archive.unpackedSize') },
    files: c.arr(o['files'], 'files').map((x, i) => c.fileRef(x, `files[${i}]`)),
    links: c.arr(o['links'], 'links').map((x, i) => {
      const l = c.obj(x, `links[${i}]`);
      const link = c.str(l['link'], `links[${i}].link`);
      // an alias points to a sibling folder only: never outside the lists
      if (!/^[A-Za-z0-9_][A-Za-z0-9._+-]*$/.test(link)) c.fail(`links[${i}].link`, 'expected a sibling name');
      return { path: c.safePath(l['path'], `links[${i}].path`), link };
    }),
    categories: c.arr(o['categories'], 'categories').map((x, i) => {
      const k = c.obj(x, `categories[${i}]`);
      return {
        name: c.str(k['name'], `categories[${i}].name`),
        domains: c.int(k['domains'], `categories[${i}].domains`),
        urls: c.int(k['urls'], `categories[${i}].urls`),
        expressions: c.int(k['expressions'], `categories[${i}].expressions`),
      };
    }),
  };
  const seen = new Set<string>();
  let total = 0;
  for (const f of [...common.files, ...common.links]) {
    if (seen.has(f.path)) c.fail('files', `path ${f.path} listed twice`);
    seen.add(f.path);
    if (f.path !== POLICY_PATH && !f.path.startsWith(LISTS_PREFIX)) c.fail('files', `path ${f.path} is neither ${POLICY_PATH} nor under ${LISTS_PREFIX}`);
  }
  for (const f of common.files) total += f.size;
  if (kind === 'full') {
    if (common.archive.unpackedSize !== total) c.fail('archive.unpackedSize', `expected the sum of file sizes ${total}, got ${common.archive.unpackedSize}`);
    if (!common.files.some((f) => f.path === POLICY_PATH)) c.fail('files', `no ${POLICY_PATH}`);
    return { ...common, kind: 'full' };
  }
  const b = c.obj(o['base'], 'base');
  const base = { serial: c.int(b['serial'], 'base.serial', 1), manifestSha256: c.hex(b['manifestSha256'], 'base.manifestSha256') };
  if (base.serial >= common.serial) c.fail('base.serial', `base ${base.serial} is not older than the delta ${common.serial}`);
  const removed = c.arr(o['removed'], 'removed').map((x, i) => c.safePath(x, `removed[${i}]`));
  if (common.links.length) c.fail('links', 'a delta cannot change links');
  return { ...common, kind: 'delta', base, removed };
}

export function parseFeed(doc: unknown, what = 'feed pointer'): FeedPointer {
  const c = new Check(what);
  const o = c.obj(doc, '(top)');
  if (o['type'] !== 'gardefou-feed') c.fail('type', 'expected "gardefou-feed"');
  if (o['format'] !== FORMAT) c.fail('format', `expected ${FORMAT}, got ${JSON.stringify(o['format'])}`);
  const ref = (x: unknown, f: string) => {
    const r = c.obj(x, f);
    return { serial: c.int(r['serial'], `${f}.serial`, 1), manifest: c.fileRef(r['manifest'], `${f}.manifest`) };
  };
  const full = ref(o['full'], 'full');
  const delta = o['delta'] === null || o['delta'] === undefined ? null : ref(o['delta'], 'delta');
  const serial = c.int(o['serial'], 'serial', 1);
  const top = delta ? delta.serial : full.serial;
  if (serial !== top) c.fail('serial', `expected the newest bundle's serial ${top}, got ${serial}`);
  if (delta && delta.serial <= full.serial) c.fail('delta.serial', `delta ${delta.serial} is not newer than the full bundle ${full.serial}`);
  return { type: 'gardefou-feed', format: FORMAT, serial, created: c.time(o['created'], 'created'), expires: c.time(o['expires'], 'expires'), full, delta };
}

export function parseDeltaBody(bytes: Buffer, maxUnpacked: number, what = 'delta'): DeltaBody {
  let text: string;
  try {
    text = zlib.gunzipSync(bytes, { maxOutputLength: Math.max(1024, maxUnpacked) }).toString('utf8');
  } catch (err) {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: cannot gunzip (${(err as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: not JSON`);
  }
  const c = new Check(what);
  const o = c.obj(doc, '(top)');
  if (o['type'] !== 'gardefou-delta') c.fail('type', 'expected "gardefou-delta"');
  const lines = (x: unknown, f: string) => c.arr(x, f).map((l, i) => c.str(l, `${f}[${i}]`));
  return {
    type: 'gardefou-delta',
    base: c.int(o['base'], 'base', 1),
    serial: c.int(o['serial'], 'serial', 1),
    edits: c.arr(o['edits'], 'edits').map((x, i) => {
      const e = c.obj(x, `edits[${i}]`);
      return { path: c.safePath(e['path'], `edits[${i}].path`), add: lines(e['add'], `edits[${i}].add`), remove: lines(e['remove'], `edits[${i}].remove`) };
    }),
    replace: c.arr(o['replace'], 'replace').map((x, i) => {
      const r = c.obj(x, `replace[${i}]`);
      return { path: c.safePath(r['path'], `replace[${i}].path`), content: c.str(r['content'], `replace[${i}].content`) };
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Source tree (DASEN side)

export interface SourceEntry {
  /** bundle path ("lists/adult/domains", "policy.json") */
  path: string;
  /** absolute file to read, or null with `data` */
  file: string | null;
  data: Buffer | null;
  size: number;
}

/**
 * Walks a UT1 folder: regular files become `lists/...` entries, symbolic links (alias
 * categories) become links to a sibling. Anything else, or an unsafe name, is an input error.
 */
export function scanSource(dir: string): { files: SourceEntry[]; links: LinkEntry[] } {
  const files: SourceEntry[] = [];
  const links: LinkEntry[] = [];
  const walk = (abs: string, rel: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(abs).sort();
    } catch (err) {
      throw new InputError(`reading source ${abs}: ${(err as Error).message}`);
    }
    for (const name of names) {
      const a = path.join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const p = LISTS_PREFIX + r;
      if (!isSafePath(p)) throw new InputError(`reading source ${a}: unsupported file name (letters, digits, . _ + - only)`);
      const st = fs.lstatSync(a);
      if (st.isSymbolicLink()) {
        const target = fs.readlinkSync(a);
        if (!/^[A-Za-z0-9_][A-Za-z0-9._+-]*$/.test(target)) throw new InputError(`reading source ${a}: link to ${target}: only links to a sibling are supported`);
        links.push({ path: p, link: target });
      } else if (st.isDirectory()) {
        walk(a, r);
      } else if (st.isFile()) {
        files.push({ path: p, file: a, data: null, size: st.size });
      } else {
        throw new InputError(`reading source ${a}: not a file, folder or link`);
      }
    }
  };
  walk(path.resolve(dir), '');
  if (files.length === 0) throw new InputError(`reading source ${dir}: no files`);
  return { files, links };
}

/** The line files whose changes travel as line sets in a delta. */
export function isLineFile(p: string): boolean {
  return /\/(domains|urls)(\.\d+)?$/.test(p);
}

/** Category counts from file contents: non-empty lines that are not comments. */
export function categoryCounts(entries: ReadonlyArray<{ path: string; content: Buffer }>): CategoryInfo[] {
  const byName = new Map<string, CategoryInfo>();
  for (const e of entries) {
    if (!e.path.startsWith(LISTS_PREFIX)) continue;
    const parts = e.path.slice(LISTS_PREFIX.length).split('/');
    if (parts.length !== 2) continue;
    const [name, base] = parts as [string, string];
    const kind = /^domains(\.\d+)?$/.test(base) ? 'domains' : /^urls(\.\d+)?$/.test(base) ? 'urls' : /expression/.test(base) ? 'expressions' : null;
    let info = byName.get(name);
    if (!info) {
      info = { name, domains: 0, urls: 0, expressions: 0 };
      byName.set(name, info);
    }
    if (kind) info[kind] += countEntries(e.content);
  }
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export function countEntries(buf: Buffer): number {
  let n = 0;
  for (const l of entryLines(buf)) if (l) n++;
  return n;
}

/** Normalised entries of a list file: CR and blanks trimmed; comments and empty lines ''. */
function* entryLines(buf: Buffer): Generator<string> {
  const text = buf.toString('latin1');
  let start = 0;
  while (start < text.length) {
    let nl = text.indexOf('\n', start);
    if (nl < 0) nl = text.length;
    const l = text.slice(start, nl).trim();
    yield l.startsWith('#') ? '' : l;
    start = nl + 1;
  }
}

export function entrySet(buf: Buffer): Set<string> {
  const s = new Set<string>();
  for (const l of entryLines(buf)) if (l) s.add(l);
  return s;
}

/**
 * Applies a line-set edit. Deterministic (the DASEN computes the resulting hash with this very
 * function): lines of `base` kept in order unless their normalised entry is removed, then the
 * added entries, one per line, LF-terminated.
 */
export function applyLineEdit(base: Buffer, add: readonly string[], remove: readonly string[]): Buffer {
  const rm = new Set(remove);
  const text = base.toString('latin1');
  const lines = text.length ? text.split('\n') : [];
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  const out: string[] = [];
  for (const l of lines) {
    const n = l.trim();
    if (n && !n.startsWith('#') && rm.has(n)) continue;
    out.push(l);
  }
  for (const a of add) out.push(a);
  return Buffer.from(out.length ? out.join('\n') + '\n' : '', 'latin1');
}

// ---------------------------------------------------------------------------------------------
// ustar writer

export type TarItem = { path: string; size: number; file: string | null; data: Buffer | null } | { path: string; link: string };

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

export function tarHeader(name: string, size: number, type: '0' | '2', link: string, mtime: number): Buffer {
  const h = Buffer.alloc(512, 0);
  let prefix = '';
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || name.length - cut - 1 > 100) throw new InputError(`writing bundle: path too long for ustar: ${name}`);
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  h.write(base, 0, 100, 'utf8');
  h.write(octal(type === '2' ? 0o777 : 0o644, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(mtime, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write(type, 156, 'ascii');
  h.write(link, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += h[i] ?? 0;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/** Writes a gzip'd ustar of `items` (in the given order) to `outFile`; returns its sha256 and size. */
export async function writeTarGz(outFile: string, items: readonly TarItem[], mtime: number): Promise<{ sha256: string; size: number }> {
  async function* gen(): AsyncGenerator<Buffer> {
    for (const it of items) {
      if ('link' in it) {
        yield tarHeader(it.path, 0, '2', it.link, mtime);
        continue;
      }
      yield tarHeader(it.path, it.size, '0', '', mtime);
      let written = 0;
      if (it.data) {
        yield it.data;
        written = it.data.length;
      } else if (it.file) {
        for await (const chunk of fs.createReadStream(it.file, { highWaterMark: 1 << 20 })) {
          written += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
      }
      if (written !== it.size) throw new InputError(`writing bundle: ${it.path} changed while being read (expected ${it.size} bytes, got ${written})`);
      const pad = (512 - (it.size % 512)) % 512;
      if (pad) yield Buffer.alloc(pad, 0);
    }
    yield Buffer.alloc(1024, 0);
  }
  const hash = crypto.createHash('sha256');
  let size = 0;
  const out = fs.createWriteStream(outFile, { flags: 'wx' });
  await pipeline(Readable.from(gen()), zlib.createGzip({ level: 9 }), async function* (src: AsyncIterable<Buffer>) {
    for await (const chunk of src) {
      hash.update(chunk);
      size += chunk.length;
      yield chunk;
    }
  }, out);
  return { sha256: hash.digest('hex'), size };
}

// ---------------------------------------------------------------------------------------------
// strict ustar reader

export interface TarSink {
  write(chunk: Buffer): Promise<void> | void;
  close(): Promise<void> | void;
}

/**
 * Reads a (gunzipped) ustar stream that must hold exactly `expected`, in order: each entry's
 * name, type, size and SHA-256 must match, then only zero blocks may follow. `open` returns
 * where an entry's bytes go (or null to only hash them); `link` is called for symbolic links.
 */
export async function readTarStrict(
  src: AsyncIterable<Buffer> | Iterable<Buffer>,
  expected: { files: readonly FileRef[]; links: readonly LinkEntry[] },
  open: (f: FileRef) => Promise<TarSink | null> | TarSink | null,
  link: (l: LinkEntry) => Promise<void> | void,
  what: string,
): Promise<void> {
  const order: Array<FileRef | LinkEntry> = [...expected.files, ...expected.links];
  let idx = 0;
  let pending: Buffer = Buffer.alloc(0);
  let cur: { ref: FileRef; left: number; pad: number; hash: crypto.Hash; sink: TarSink | null } | null = null;
  let padLeft = 0;
  let ended = false;
  const fail = (reason: typeof Refusal.hashMismatch | typeof Refusal.sizeMismatch | typeof Refusal.malformed, msg: string): never => {
    throw new UpdateRefusedError(reason, `reading ${what}: ${msg}`);
  };
  const finishEntry = async () => {
    if (!cur) return;
    const digest = cur.hash.digest('hex');
    if (cur.sink) await cur.sink.close();
    if (digest !== cur.ref.sha256) fail(Refusal.hashMismatch, `${cur.ref.path}: sha256 ${digest.slice(0, 16)}..., manifest says ${cur.ref.sha256.slice(0, 16)}...`);
    padLeft = cur.pad;
    cur = null;
  };
  for await (const chunk of src) {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let off = 0;
    while (off < pending.length) {
      if (cur) {
        const take = Math.min(cur.left, pending.length - off);
        const part = pending.subarray(off, off + take);
        cur.hash.update(part);
        if (cur.sink) await cur.sink.write(part);
        cur.left -= take;
        off += take;
        if (cur.left === 0) await finishEntry();
        continue;
      }
      if (padLeft) {
        const take = Math.min(padLeft, pending.length - off);
        padLeft -= take;
        off += take;
        continue;
      }
      if (pending.length - off < 512) break;
      const h = pending.subarray(off, off + 512);
      off += 512;
      if (ended || h.every((b) => b === 0)) {
        if (!h.every((b) => b === 0)) fail(Refusal.malformed, 'data after the end of the archive');
        ended = true;
        continue;
      }
      if (idx >= order.length) fail(Refusal.malformed, `entry beyond the ${order.length} listed in the manifest`);
      const want = order[idx++] as FileRef | LinkEntry;
      const hdr = parseHeader(h, what);
      if (hdr.name !== want.path) fail(Refusal.malformed, `entry ${idx}: expected ${want.path}, got ${hdr.name.slice(0, 80)}`);
      if ('link' in want) {
        if (hdr.type !== '2' || hdr.link !== want.link || hdr.size !== 0) fail(Refusal.malformed, `${want.path}: expected a link to ${want.link}`);
        await link(want);
        continue;
      }
      if (hdr.type !== '0' && hdr.type !== '\0') fail(Refusal.malformed, `${want.path}: expected a regular file, got type ${JSON.stringify(hdr.type)}`);
      if (hdr.size !== want.size) fail(Refusal.sizeMismatch, `${want.path}: ${hdr.size} bytes, manifest says ${want.size}`);
      cur = { ref: want, left: want.size, pad: (512 - (want.size % 512)) % 512, hash: crypto.createHash('sha256'), sink: await open(want) };
      if (cur.left === 0) await finishEntry();
    }
    pending = pending.subarray(off);
  }
  if (cur) fail(Refusal.sizeMismatch, `${(cur as { ref: FileRef }).ref.path}: archive ends ${(cur as { left: number }).left} bytes early`);
  if (idx !== order.length) fail(Refusal.sizeMismatch, `archive ends early, after ${idx} of ${order.length} entries`);
  if (pending.length && !pending.every((b) => b === 0)) fail(Refusal.malformed, 'trailing bytes after the archive');
}

function parseHeader(h: Buffer, what: string): { name: string; size: number; type: string; link: string } {
  const str = (off: number, len: number) => {
    const s = h.subarray(off, off + len);
    const z = s.indexOf(0);
    return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
  };
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] ?? 0);
  const stored = parseInt(str(148, 8).trim(), 8);
  if (stored !== sum) throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: bad tar header checksum`);
  const sizeText = str(124, 12).trim();
  if (!/^[0-7]{1,11}$/.test(sizeText)) throw new UpdateRefusedError(Refusal.malformed, `reading ${what}: bad tar size field`);
  const prefix = str(345, 155);
  const name = str(0, 100);
  return { name: prefix ? `${prefix}/${name}` : name, size: parseInt(sizeText, 8), type: String.fromCharCode(h[156] ?? 0), link: str(157, 100) };
}

// ---------------------------------------------------------------------------------------------
// small helpers

export function sha256(buf: Buffer | string): string {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

export async function sha256File(file: string): Promise<{ sha256: string; size: number }> {
  const h = crypto.createHash('sha256');
  let size = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), size };
}

