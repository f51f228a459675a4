/**
 * The DASEN side: publish a full bundle or an emergency delta into a static feed folder, and
 * verify a feed before it goes out. Layouts are described in bundle.ts.
 *
 * Publishing order (a mirror or CDN copying the folder at any moment sees a consistent feed):
 * archive (temp + fsync + rename), then its manifest, then feed.json last. Old bundles are kept
 * (`keep` full bundles and the deltas over them) so gateways in the middle of a download of the
 * previous bundle finish it; the pointer never names a deleted file.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { errorMessage, InputError } from '../errors';
import {
  applyLineEdit,
  CategoryInfo,
  categoryCounts,
  DeltaBody,
  DeltaManifest,
  entrySet,
  FEED_FILE,
  FeedPointer,
  FileRef,
  FullManifest,
  isLineFile,
  LinkEntry,
  Manifest,
  parseDeltaBody,
  parseFeed,
  parseManifest,
  POLICY_PATH,
  readTarStrict,
  scanSource,
  sha256,
  sha256File,
  SourceEntry,
  writeTarGz,
} from './bundle';
import { fsyncPath, writeFileAtomic } from '../fsync';
import { Envelope, isObject, loadPrivateKey, openEnvelope, signEnvelope, TrustedKey, UpdateRefusedError } from './sign';

export interface PublishOptions {
  source: string;
  policy: string;
  /** private key files; several while a rotation is under way (each signs) */
  keys: string[];
  feed: string;
  expiresDays?: number;
  delta?: boolean;
  /** how many full bundles (and the deltas over them) stay in the folder; default 3 */
  keep?: number;
  now?: Date;
}

export interface PublishReport {
  kind: 'full' | 'delta';
  serial: number;
  base: number | null;
  created: string;
  expires: string;
  keyids: string[];
  manifest: FileRef;
  archive: FileRef & { unpackedSize: number };
  files: number;
  categories: number;
  domains: number;
  urls: number;
  /** for a delta: entries added and removed, files replaced or removed */
  changes: { added: number; removed: number; replaced: number; deleted: number } | null;
  /** bytes a gateway running the base downloads for this update: pointer + manifest + archive */
  downloadBytes: number;
  pruned: string[];
  ms: number;
}

const DAY_MS = 86_400_000;

export async function publish(opts: PublishOptions): Promise<PublishReport> {
  const t0 = process.hrtime.bigint();
  const now = opts.now ?? new Date();
  const expiresDays = opts.expiresDays ?? 30;
  if (!(expiresDays > 0 && expiresDays <= 3650)) throw new InputError(`publishing: --expires ${expiresDays}: expected 1 to 3650 days`);
  if (opts.keys.length === 0) throw new InputError('publishing: at least one --key is needed');
  const keys = opts.keys.map((k) => loadPrivateKey(k));
  const policyBytes = readPolicy(opts.policy);
  const feedDir = path.resolve(opts.feed);
  for (const d of ['', 'bundles', 'manifests', 'deltas']) fs.mkdirSync(path.join(feedDir, d), { recursive: true });
  const last = lastSerial(feedDir);
  const serial = last + 1;
  const created = isoSeconds(now);
  const expires = isoSeconds(new Date(now.getTime() + expiresDays * DAY_MS));
  const keyids = keys.map((k) => k.keyid);
  const src = scanSource(opts.source);
  src.files.push({ path: POLICY_PATH, file: null, data: policyBytes, size: policyBytes.length });
  src.files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));

  let manifest: Manifest;
  let changes: PublishReport['changes'] = null;
  let base: number | null = null;
  let pointer: Omit<FeedPointer, 'delta'> & { delta: FeedPointer['delta'] };
  const manifestRel = `manifests/${serial}.json`;
  if (!opts.delta) {
    const files: FileRef[] = [];
    const counted: Array<{ path: string; content: Buffer }> = [];
    for (const f of src.files) {
      const content = f.data ?? fs.readFileSync(f.file as string);
      f.size = content.length;
      files.push({ path: f.path, sha256: sha256(content), size: content.length });
      counted.push({ path: f.path, content });
    }
    const categories = categoryCounts(counted);
    counted.length = 0;
    const tmp = path.join(feedDir, 'bundles', `.tmp-${serial}-${crypto.randomBytes(4).toString('hex')}`);
    let arch: { sha256: string; size: number };
    try {
      arch = await writeTarGz(tmp, [...src.files, ...src.links], Math.floor(now.getTime() / 1000));
      fsyncPath(tmp);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
    const archRel = `bundles/${serial}-${arch.sha256.slice(0, 16)}.tar.gz`;
    fs.renameSync(tmp, path.join(feedDir, archRel));
    fsyncPath(path.join(feedDir, 'bundles'));
    const unpackedSize = files.reduce((s, f) => s + f.size, 0);
    manifest = {
      type: 'gardefou-manifest', format: 1, kind: 'full', serial, created, expires, keyids,
      archive: { path: archRel, sha256: arch.sha256, size: arch.size, unpackedSize },
      files, links: src.links, categories,
    } satisfies FullManifest;
    pointer = { type: 'gardefou-feed', format: 1, serial, created, expires, full: { serial, manifest: { path: manifestRel, sha256: '', size: 0 } }, delta: null };
  } else {
    const cur = readLocalFeed(feedDir);
    if (!cur) throw new InputError(`publishing a delta: ${path.join(feedDir, FEED_FILE)} does not exist; publish a full bundle first`);
    const baseManifestBytes = readFeedFile(feedDir, cur.full.manifest.path);
    const baseManifest = parseManifest(envelopePayload(baseManifestBytes, cur.full.manifest.path), cur.full.manifest.path);
    if (baseManifest.kind !== 'full') throw new InputError(`publishing a delta: ${cur.full.manifest.path} is not a full bundle`);
    base = baseManifest.serial;
    const baseFiles = await loadArchive(feedDir, baseManifest);
    const d = computeDelta(baseFiles, baseManifest.links, src.files, src.links, base, serial);
    changes = d.changes;
    const body = zlib.gzipSync(Buffer.from(JSON.stringify(d.body), 'utf8'), { level: 9 });
    const bodySha = sha256(body);
    const archRel = `deltas/${serial}-${bodySha.slice(0, 16)}.json.gz`;
    writeFileAtomic(path.join(feedDir, archRel), body);
    manifest = {
      type: 'gardefou-manifest', format: 1, kind: 'delta', serial, created, expires, keyids,
      base: { serial: base, manifestSha256: sha256(baseManifestBytes) },
      archive: { path: archRel, sha256: bodySha, size: body.length, unpackedSize: d.unpackedSize },
      files: d.files, removed: d.removed, links: [], categories: d.categories,
    } satisfies DeltaManifest;
    pointer = { type: 'gardefou-feed', format: 1, serial, created, expires, full: cur.full, delta: { serial, manifest: { path: manifestRel, sha256: '', size: 0 } } };
  }

  const manifestText = signEnvelope('gardefou-manifest', manifest, keys);
  const manifestFile = path.join(feedDir, manifestRel);
  if (fs.existsSync(manifestFile)) throw new InputError(`publishing: ${manifestFile} already exists (serial ${serial} was published already)`);
  writeFileAtomic(manifestFile, manifestText);
  const mref: FileRef = { path: manifestRel, sha256: sha256(manifestText), size: Buffer.byteLength(manifestText) };
  if (pointer.delta) pointer.delta.manifest = mref;
  else pointer.full.manifest = mref;
  const pointerText = signEnvelope('gardefou-feed', pointer, keys);
  writeFileAtomic(path.join(feedDir, FEED_FILE), pointerText);
  const pruned = prune(feedDir, opts.keep ?? 3);
  return {
    kind: manifest.kind,
    serial,
    base,
    created,
    expires,
    keyids,
    manifest: mref,
    archive: manifest.archive,
    files: manifest.files.length,
    categories: manifest.categories.length,
    domains: manifest.categories.reduce((s, c) => s + c.domains, 0),
    urls: manifest.categories.reduce((s, c) => s + c.urls, 0),
    changes,
    downloadBytes: Buffer.byteLength(pointerText) + mref.size + manifest.archive.size,
    pruned,
    ms: Number(process.hrtime.bigint() - t0) / 1e6,
  };
}

function readPolicy(file: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new InputError(`reading policy ${file}: ${errorMessage(err)}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new InputError(`reading policy ${file}: not JSON (${errorMessage(err)})`);
  }
  if (!isObject(doc)) throw new InputError(`reading policy ${file}: expected a JSON object ({} for the defaults)`);
  return bytes;
}

function isoSeconds(d: Date): string {
  return new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** Highest serial ever published into this folder (pointer and manifest names): the next one is +1. */
function lastSerial(feedDir: string): number {
  let max = 0;
  const cur = readLocalFeed(feedDir);
  if (cur) max = cur.serial;
  let names: string[] = [];
  try {
    names = fs.readdirSync(path.join(feedDir, 'manifests'));
  } catch {
    names = [];
  }
  for (const n of names) {
    const m = /^(\d+)\.json$/.exec(n);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max;
}

/** The folder's own pointer, read without a signature check (the publisher's disk). */
function readLocalFeed(feedDir: string): FeedPointer | null {
  const file = path.join(feedDir, FEED_FILE);
  if (!fs.existsSync(file)) return null;
  return parseFeed(envelopePayload(fs.readFileSync(file), file), file);
}

function envelopePayload(bytes: Buffer, what: string): unknown {
  try {
    const env = JSON.parse(bytes.toString('utf8')) as Envelope;
    return JSON.parse(env.payload);
  } catch (err) {
    throw new InputError(`reading ${what}: not a signed envelope (${errorMessage(err)})`);
  }
}

function readFeedFile(feedDir: string, rel: string): Buffer {
  try {
    return fs.readFileSync(path.join(feedDir, rel));
  } catch (err) {
    throw new InputError(`reading feed file ${rel}: ${errorMessage(err)}`);
  }
}

/** Unpacks a full bundle of the folder into memory, checking every hash. */
async function loadArchive(feedDir: string, m: FullManifest): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const file = path.join(feedDir, m.archive.path);
  const got = await sha256File(file);
  if (got.sha256 !== m.archive.sha256 || got.size !== m.archive.size) {
    throw new UpdateRefusedError('hash-mismatch', `reading ${m.archive.path}: sha256/size differ from manifest ${m.serial}`);
  }
  await readTarStrict(
    fs.createReadStream(file).pipe(zlib.createGunzip()),
    m,
    (f) => {
      const parts: Buffer[] = [];
      return { write: (c) => void parts.push(Buffer.from(c)), close: () => void files.set(f.path, Buffer.concat(parts)) };
    },
    () => undefined,
    m.archive.path,
  );
  return files;
}

interface DeltaComputation {
  body: DeltaBody;
  files: FileRef[];
  removed: string[];
  categories: CategoryInfo[];
  unpackedSize: number;
  changes: NonNullable<PublishReport['changes']>;
}

function computeDelta(
  baseFiles: Map<string, Buffer>,
  baseLinks: readonly LinkEntry[],
  newFiles: readonly SourceEntry[],
  newLinks: readonly LinkEntry[],
  base: number,
  serial: number,
): DeltaComputation {
  const linkKey = (ls: readonly LinkEntry[]) => JSON.stringify([...ls].sort((a, b) => (a.path < b.path ? -1 : 1)));
  if (linkKey(baseLinks) !== linkKey(newLinks)) throw new InputError('publishing a delta: alias links changed since the full bundle; publish a full bundle');
  const body: DeltaBody = { type: 'gardefou-delta', base, serial, edits: [], replace: [] };
  const files: FileRef[] = [];
  const changed: Array<{ path: string; content: Buffer }> = [];
  const changes = { added: 0, removed: 0, replaced: 0, deleted: 0 };
  const seen = new Set<string>();
  for (const f of newFiles) {
    seen.add(f.path);
    const content = f.data ?? fs.readFileSync(f.file as string);
    const old = baseFiles.get(f.path);
    if (old && old.equals(content)) continue;
    if (isLineFile(f.path)) {
      const before = old ? entrySet(old) : new Set<string>();
      const after = entrySet(content);
      const add = [...after].filter((x) => !before.has(x)).sort();
      const remove = [...before].filter((x) => !after.has(x)).sort();
      if (old && add.length === 0 && remove.length === 0) continue; // reordered or comments only
      const result = applyLineEdit(old ?? Buffer.alloc(0), add, remove);
      body.edits.push({ path: f.path, add, remove });
      files.push({ path: f.path, sha256: sha256(result), size: result.length });
      changed.push({ path: f.path, content: result });
      changes.added += add.length;
      changes.removed += remove.length;
    } else {
      body.replace.push({ path: f.path, content: content.toString('base64') });
      files.push({ path: f.path, sha256: sha256(content), size: content.length });
      changed.push({ path: f.path, content });
      changes.replaced++;
    }
  }
  const removed = [...baseFiles.keys()].filter((p) => !seen.has(p)).sort();
  changes.deleted = removed.length;
  // counts of the categories touched, over their resulting files
  const touched = new Set([...changed, ...removed.map((p) => ({ path: p }))].map((c) => c.path.split('/')[1]).filter((x): x is string => !!x));
  const resulting: Array<{ path: string; content: Buffer }> = [];
  const changedMap = new Map(changed.map((c) => [c.path, c.content]));
  for (const [p, content] of baseFiles) if (!removed.includes(p) && !changedMap.has(p)) resulting.push({ path: p, content });
  resulting.push(...changed);
  const categories = categoryCounts(resulting.filter((r) => touched.has(r.path.split('/')[1] ?? '')));
  const unpackedSize = Buffer.byteLength(JSON.stringify(body));
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  return { body, files, removed, categories, unpackedSize, changes };
}

/**
 * Applies a delta body on base contents (`getBase` returns a base file or null) and checks the
 * result against the delta manifest: exactly the files it lists, with their hashes and sizes.
 * Returns the new and changed files; the caller drops `manifest.removed`.
 */
export function applyDelta(getBase: (p: string) => Buffer | null, body: DeltaBody, m: DeltaManifest, what: string): Map<string, Buffer> {
  if (body.base !== m.base.serial || body.serial !== m.serial) {
    throw new UpdateRefusedError('mix-and-match', `reading ${what}: delta body is ${body.base}->${body.serial}, manifest says ${m.base.serial}->${m.serial}`);
  }
  const out = new Map<string, Buffer>();
  for (const e of body.edits) {
    if (!isLineFile(e.path)) throw new UpdateRefusedError('malformed', `reading ${what}: line edit of ${e.path}, which is not a domains or urls file`);
    out.set(e.path, applyLineEdit(getBase(e.path) ?? Buffer.alloc(0), e.add, e.remove));
  }
  for (const r of body.replace) out.set(r.path, Buffer.from(r.content, 'base64'));
  const listed = new Map(m.files.map((f) => [f.path, f]));
  if (listed.size !== out.size) throw new UpdateRefusedError('malformed', `reading ${what}: delta changes ${out.size} files, manifest lists ${listed.size}`);
  for (const [p, content] of out) {
    const ref = listed.get(p);
    if (!ref) throw new UpdateRefusedError('malformed', `reading ${what}: delta changes ${p}, which the manifest does not list`);
    if (content.length !== ref.size) throw new UpdateRefusedError('size-mismatch', `applying ${what}: ${p} is ${content.length} bytes, manifest says ${ref.size}`);
    if (sha256(content) !== ref.sha256) throw new UpdateRefusedError('hash-mismatch', `applying ${what}: ${p} differs from the manifest's sha256`);
  }
  for (const p of m.removed) if (getBase(p) === null) throw new UpdateRefusedError('malformed', `reading ${what}: removes ${p}, absent from the base`);
  return out;
}

/** Files of the state "full + delta", in path order. */
export function effectiveFiles(full: FullManifest, delta: DeltaManifest | null): FileRef[] {
  if (!delta) return full.files;
  const map = new Map(full.files.map((f) => [f.path, f]));
  for (const p of delta.removed) map.delete(p);
  for (const f of delta.files) map.set(f.path, f);
  return [...map.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Keeps the `keep` newest full bundles (and the deltas over them) plus everything the pointer names. */
function prune(feedDir: string, keep: number): string[] {
  const cur = readLocalFeed(feedDir);
  if (!cur || keep < 1) return [];
  const manifests: Array<{ serial: number; m: Manifest; rel: string }> = [];
  for (const n of fs.readdirSync(path.join(feedDir, 'manifests'))) {
    if (!/^\d+\.json$/.test(n)) continue;
    const rel = `manifests/${n}`;
    try {
      manifests.push({ serial: Number(n.slice(0, -5)), m: parseManifest(envelopePayload(fs.readFileSync(path.join(feedDir, rel)), rel), rel), rel });
    } catch {
      // not ours to judge here: `dasen verify` reports it; never delete what we cannot read
    }
  }
  const fulls = manifests.filter((x) => x.m.kind === 'full').map((x) => x.serial).sort((a, b) => b - a);
  const keptFull = new Set(fulls.slice(0, keep));
  keptFull.add(cur.full.serial);
  const removed: string[] = [];
  for (const x of manifests) {
    const baseSerial = x.m.kind === 'full' ? x.serial : x.m.base.serial;
    const named = x.serial === cur.full.serial || x.serial === cur.delta?.serial;
    if (named || keptFull.has(baseSerial)) continue;
    for (const rel of [x.m.archive.path, x.rel]) {
      fs.rmSync(path.join(feedDir, rel), { force: true });
      removed.push(rel);
    }
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// verify

export interface FeedCheck {
  ok: boolean;
  serial: number | null;
  expires: string | null;
  keyid: string | null;
  full: { serial: number; files: number; archiveBytes: number } | null;
  delta: { serial: number; base: number; files: number; removed: number; archiveBytes: number } | null;
  problems: string[];
  /** manifests in the folder beyond the ones the pointer names (kept for caches) */
  kept: number;
}

/** Checks a feed folder the way a gateway would (signatures, hashes, sizes, delta on its base, expiry). */
export async function verifyFeed(feedDir: string, trusted: ReadonlyMap<string, TrustedKey>, now = new Date()): Promise<FeedCheck> {
  const res: FeedCheck = { ok: false, serial: null, expires: null, keyid: null, full: null, delta: null, problems: [], kept: 0 };
  const dir = path.resolve(feedDir);
  try {
    const { doc, keyid } = openEnvelope(readFeedFile(dir, FEED_FILE), 'gardefou-feed', trusted, FEED_FILE);
    const feed = parseFeed(doc, FEED_FILE);
    res.serial = feed.serial;
    res.expires = feed.expires;
    res.keyid = keyid;
    if (Date.parse(feed.expires) <= now.getTime()) res.problems.push(`${FEED_FILE}: expired at ${feed.expires}`);
    const openManifest = (ref: FileRef, serial: number) => {
      const bytes = readFeedFile(dir, ref.path);
      if (bytes.length !== ref.size || sha256(bytes) !== ref.sha256) throw new UpdateRefusedError('hash-mismatch', `${ref.path}: sha256/size differ from ${FEED_FILE}`);
      const m = parseManifest(openEnvelope(bytes, 'gardefou-manifest', trusted, ref.path).doc, ref.path);
      if (m.serial !== serial) throw new UpdateRefusedError('mix-and-match', `${ref.path}: serial ${m.serial}, ${FEED_FILE} says ${serial}`);
      if (Date.parse(m.expires) <= now.getTime()) res.problems.push(`${ref.path}: expired at ${m.expires}`);
      return m;
    };
    const full = openManifest(feed.full.manifest, feed.full.serial);
    if (full.kind !== 'full') throw new UpdateRefusedError('malformed', `${feed.full.manifest.path}: not a full manifest`);
    const files = await loadArchive(dir, full);
    res.full = { serial: full.serial, files: full.files.length, archiveBytes: full.archive.size };
    if (feed.delta) {
      const dm = openManifest(feed.delta.manifest, feed.delta.serial);
      if (dm.kind !== 'delta') throw new UpdateRefusedError('malformed', `${feed.delta.manifest.path}: not a delta manifest`);
      if (dm.base.serial !== full.serial || dm.base.manifestSha256 !== feed.full.manifest.sha256) {
        throw new UpdateRefusedError('mix-and-match', `${feed.delta.manifest.path}: base ${dm.base.serial} is not the full bundle ${full.serial} of ${FEED_FILE}`);
      }
      const bytes = readFeedFile(dir, dm.archive.path);
      if (bytes.length !== dm.archive.size || sha256(bytes) !== dm.archive.sha256) throw new UpdateRefusedError('hash-mismatch', `${dm.archive.path}: sha256/size differ from manifest ${dm.serial}`);
      applyDelta((p) => files.get(p) ?? null, parseDeltaBody(bytes, dm.archive.unpackedSize, dm.archive.path), dm, dm.archive.path);
      res.delta = { serial: dm.serial, base: dm.base.serial, files: dm.files.length, removed: dm.removed.length, archiveBytes: dm.archive.size };
    }
    res.kept = fs.readdirSync(path.join(dir, 'manifests')).filter((n) => /^\d+\.json$/.test(n)).length - (feed.delta ? 2 : 1);
  } catch (err) {
    res.problems.push(errorMessage(err));
  }
  res.ok = res.problems.length === 0;
  return res;
}
