/**
 * The gateway side of the DASEN channel: pull the signed feed, verify, apply, swap.
 *
 * One check (checkNow):
 *   1. conditional GET of feed.json (If-None-Match / If-Modified-Since), capped at 1 MiB;
 *      a 304 still checks the remembered pointer's expiry (freeze)
 *   2. pointer: signature by a pinned key, fields, not expired, serial >= running (rollback)
 *   3. manifests named by the pointer: size + sha256 as the pointer says, signature, fields,
 *      serial as the pointer says, not expired, archive no larger than the cap
 *   4. archive (full bundle, only when the running state is not on that full bundle) and/or the
 *      delta: downloaded with the manifest's size as a hard cap, sha256 checked, then unpacked
 *      entry by entry with every file's size and sha256 checked
 *   5. compile (compileLists), fsync, then the atomic switch, then cleanup, then onApplied
 * Every refusal leaves `current` untouched, is logged with its reason and kept in state.json.
 *
 * State folder (update.stateDir):
 *
 *   current -> versions/<name>     symbolic link, replaced by rename(2): the one switch point
 *   versions/<serial>-<rand>/
 *     tree/lists/...               the UT1 lists in force (full bundle, or full + delta)
 *     tree/policy.json             the DASEN policy of the bundle
 *     base/...                     (delta states) the full bundle's own files, hard links: the
 *                                  next cumulative delta applies to these
 *     lists.idx                    compiled index (compileLists)
 *     policy.json                  DASEN policy composed with the school's layer (local.ts)
 *     full.json, delta.json        the verified manifest envelopes
 *     version.json                 summary, written last (a version without it is garbage)
 *   tmp/                           downloads in progress (emptied at each check)
 *   state.json                     validators and supervision data (temp + fsync + rename)
 *   update.lock                    pid of the process applying (one at a time, across processes)
 *
 * A power cut or a kill at any point leaves `current` on a complete older version or on the
 * complete new one: everything under the new version is written and fsynced (files, then
 * folders) before the link is renamed, and a half-built version is never pointed to.
 * Files are never modified in place (new files and renames only), so hard links between
 * versions are safe.
 */
import * as crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import type { Config } from '../config';
import { errorMessage } from '../errors';
import type { Logger } from '../log';
import { silentLogger } from '../log';
import {
  DeltaManifest,
  FEED_FILE,
  FeedPointer,
  FileRef,
  FullManifest,
  Manifest,
  parseDeltaBody,
  parseFeed,
  parseManifest,
  POLICY_PATH,
  readTarStrict,
  sha256,
} from './bundle';
import { fsyncPath, writeFileAtomic, writeFileSynced } from '../fsync';
import { createPolicyEngine } from '../policy/engine';
import { loadLists } from './load';
import { compileLists } from './compile';
import { ComposeResult, composePolicy } from './local';
import { applyDelta, effectiveFiles } from './feed';
import { fetchBuffer, fetchToFile, FetchOptions } from './fetch';
import { loadTrustedKeys, openEnvelope, Refusal, RefusalCode, TrustedKey, UpdateRefusedError } from './sign';

export const DEFAULT_MAX_BYTES = 512 * 1024 * 1024;
const MAX_POINTER_BYTES = 1024 * 1024;
const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
/** the policy the engine loads, in each version folder */
const COMPOSED_POLICY = 'policy.json';

export type ApplyPhase = 'verified' | 'downloaded' | 'unpacking' | 'half-unpacked' | 'unpacked' | 'compiled' | 'synced' | 'switched' | 'recorded';

export interface AppliedInfo {
  /** compiled index of the new lists */
  listsPath: string;
  /** the policy to load: the bundle's DASEN policy composed with the school's layer */
  policyPath: string;
  serial: string;
  /** the UT1 folder the index was compiled from */
  sourcePath: string;
}

export interface UpdateAgentOptions {
  /** http(s):// or file:// URL of feed.json, or of the folder holding it; null: watch only */
  feed: string | null;
  /** PEM files of the pinned DASEN public keys */
  trustedKeys: readonly string[];
  stateDir: string;
  intervalSeconds?: number;
  parentProxy?: string | null;
  /** extra CA certificates (PEM text) for the feed's server, beside the system roots */
  ca?: string | readonly string[] | null;
  /** largest bundle accepted, compressed (default 512 MiB); unpacked: 8 times that */
  maxBytes?: number;
  timeoutMs?: number;
  deadlineMs?: number;
  log?: Logger;
  onApplied?: (info: AppliedInfo) => void | Promise<void>;
  /** progress hook, awaited: for logs and for the crash tests */
  onPhase?: (phase: ApplyPhase, serial: number) => void | Promise<void>;
  /**
   * The school's policy file (config `policy`): clients, local entries, localFile. Composed with
   * the bundle's DASEN policy into the version's policy.json (src/lists/local.ts).
   */
  schoolPolicy?: string | null;
  /** extra check of a compiled version before the switch; throw to refuse it */
  validate?: (info: AppliedInfo) => void | Promise<void>;
  now?: () => Date;
}

export type UpdateOutcome = 'applied' | 'up-to-date' | 'not-modified' | 'refused' | 'busy' | 'no-feed';

export interface UpdateResult {
  outcome: UpdateOutcome;
  /** serial in force after the check */
  serial: string | null;
  previousSerial: string | null;
  reason: RefusalCode | null;
  message: string | null;
  /** bytes downloaded during this check */
  bytes: number;
  ms: number;
}

export interface RunningVersion {
  name: string;
  dir: string;
  serial: number;
  fullSerial: number;
  fullManifestSha256: string;
  kind: 'full' | 'delta';
  created: string;
  expires: string;
  keyid: string;
  appliedAt: string;
  listsPath: string;
  policyPath: string;
  sourcePath: string;
}

interface PersistedState {
  format: 1;
  feed: string | null;
  validators: { etag: string | null; lastModified: string | null; serial: number; expires: string } | null;
  lastCheck: { at: string; outcome: UpdateOutcome; ms: number } | null;
  lastSuccess: { at: string; serial: string | null } | null;
  lastApplied: { at: string; serial: string; ms: number; bytes: number } | null;
  lastRefusal: { at: string; reason: RefusalCode; message: string; serial: number | null } | null;
  consecutiveFailures: number;
  counters: Record<UpdateOutcome, number>;
}

export interface UpdateStatus {
  feed: string | null;
  stateDir: string;
  running: {
    serial: string;
    kind: 'full' | 'delta';
    fullSerial: string;
    created: string;
    ageSeconds: number;
    expires: string;
    expired: boolean;
    keyid: string;
    appliedAt: string;
    listsPath: string;
  } | null;
  lastCheck: PersistedState['lastCheck'];
  lastSuccess: PersistedState['lastSuccess'];
  lastApplied: PersistedState['lastApplied'];
  lastRefusal: PersistedState['lastRefusal'];
  consecutiveFailures: number;
  counters: PersistedState['counters'];
  /** pid of a process applying an update right now, if any */
  busyPid: number | null;
}

function emptyState(feed: string | null): PersistedState {
  return {
    format: 1,
    feed,
    validators: null,
    lastCheck: null,
    lastSuccess: null,
    lastApplied: null,
    lastRefusal: null,
    consecutiveFailures: 0,
    counters: { applied: 0, 'up-to-date': 0, 'not-modified': 0, refused: 0, busy: 0, 'no-feed': 0 },
  };
}

// ---------------------------------------------------------------------------------------------
// reading the state folder (also used by `update --status` and by `serve` at boot)

/** The version `current` points to, or null (fresh install, or nothing usable). */
export function readCurrent(stateDir: string): RunningVersion | null {
  let target: string;
  try {
    target = fs.readlinkSync(path.join(stateDir, 'current'));
  } catch {
    return null;
  }
  const dir = path.resolve(stateDir, target);
  try {
    const v = JSON.parse(fs.readFileSync(path.join(dir, 'version.json'), 'utf8')) as Omit<RunningVersion, 'name' | 'dir' | 'listsPath' | 'policyPath' | 'sourcePath'>;
    if (!Number.isSafeInteger(v.serial) || !Number.isSafeInteger(v.fullSerial)) return null;
    return {
      ...v,
      name: path.basename(dir),
      dir,
      listsPath: path.join(dir, 'lists.idx'),
      policyPath: path.join(dir, COMPOSED_POLICY),
      sourcePath: path.join(dir, 'tree', 'lists'),
    };
  } catch {
    return null;
  }
}

/** What `serve` loads at boot when the channel already applied a bundle (else null: config `lists`). */
export function currentBundle(stateDir: string): AppliedInfo | null {
  const v = readCurrent(stateDir);
  return v ? { listsPath: v.listsPath, policyPath: v.policyPath, serial: String(v.serial), sourcePath: v.sourcePath } : null;
}

function readState(stateDir: string, feed: string | null): PersistedState {
  try {
    const s = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8')) as PersistedState;
    if (s.format !== 1) return emptyState(feed);
    return { ...emptyState(feed), ...s, counters: { ...emptyState(feed).counters, ...s.counters } };
  } catch {
    return emptyState(feed);
  }
}

function lockHolder(stateDir: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(stateDir, 'update.lock'), 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null;
  }
}

/** Status from the files alone: what `gardefou update --status` prints from another process. */
export function readStatus(stateDir: string, feed: string | null, now = new Date()): UpdateStatus {
  const s = readState(stateDir, feed);
  const v = readCurrent(stateDir);
  return {
    feed: feed ?? s.feed,
    stateDir,
    running: v
      ? {
          serial: String(v.serial),
          kind: v.kind,
          fullSerial: String(v.fullSerial),
          created: v.created,
          ageSeconds: Math.max(0, Math.round((now.getTime() - Date.parse(v.created)) / 1000)),
          expires: v.expires,
          expired: Date.parse(v.expires) <= now.getTime(),
          keyid: v.keyid,
          appliedAt: v.appliedAt,
          listsPath: v.listsPath,
        }
      : null,
    lastCheck: s.lastCheck,
    lastSuccess: s.lastSuccess,
    lastApplied: s.lastApplied,
    lastRefusal: s.lastRefusal,
    consecutiveFailures: s.consecutiveFailures,
    counters: s.counters,
    busyPid: lockHolder(stateDir),
  };
}

// ---------------------------------------------------------------------------------------------

export class UpdateAgent extends EventEmitter {
  private readonly o: UpdateAgentOptions;
  private readonly log: Logger;
  private readonly stateDir: string;
  private readonly feedUrl: string | null;
  private trusted: Map<string, TrustedKey>;
  private timer: NodeJS.Timeout | null = null;
  private inflight: Promise<UpdateResult> | null = null;
  private abort = new AbortController();
  private announced: string | null = null;
  private state: PersistedState;
  private bytes = 0;

  constructor(opts: UpdateAgentOptions) {
    super();
    this.o = opts;
    this.log = opts.log ?? silentLogger();
    this.stateDir = path.resolve(opts.stateDir);
    this.feedUrl = opts.feed === null ? null : pointerUrl(opts.feed);
    this.trusted = loadTrustedKeys(opts.trustedKeys);
    if (this.feedUrl && this.trusted.size === 0) {
      throw new UpdateRefusedError(Refusal.unknownKey, 'update: a feed is configured but update.trustedKeys is empty: nothing could ever be trusted');
    }
    fs.mkdirSync(path.join(this.stateDir, 'versions'), { recursive: true, mode: 0o755 });
    this.state = readState(this.stateDir, opts.feed);
    const cur = readCurrent(this.stateDir);
    // serve loads `current` itself at boot: announce only what changes after that
    this.announced = cur ? cur.name : null;
  }

  /** The version in force (from disk). */
  current(): RunningVersion | null {
    return readCurrent(this.stateDir);
  }

  status(): UpdateStatus {
    return readStatus(this.stateDir, this.o.feed, this.now());
  }

  /** First check now, then every intervalSeconds (timer unref'd: it never keeps a process up). */
  start(): void {
    if (this.timer) return;
    this.abort = new AbortController();
    const every = Math.max(1, this.o.intervalSeconds ?? 300) * 1000;
    const tick = () => {
      void this.checkNow().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, every).unref();
      });
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  /** Stops the timer and aborts a download in progress; resolves when the check in flight ended. */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.abort.abort();
    if (this.inflight) await this.inflight.catch(() => undefined);
  }

  /** Reloads the pinned keys (after a config reload: key rotation). */
  setTrustedKeys(files: readonly string[]): void {
    this.trusted = loadTrustedKeys(files);
  }

  /** One check; concurrent callers share it. Never rejects: the result says what happened. */
  checkNow(): Promise<UpdateResult> {
    if (!this.inflight) {
      this.inflight = this.check().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  private now(): Date {
    return this.o.now ? this.o.now() : new Date();
  }

  private async check(): Promise<UpdateResult> {
    const t0 = performance.now();
    this.bytes = 0;
    const before = readCurrent(this.stateDir);
    const result = (outcome: UpdateOutcome, extra: Partial<UpdateResult> = {}): UpdateResult => {
      const after = readCurrent(this.stateDir);
      return {
        outcome,
        serial: after ? String(after.serial) : null,
        previousSerial: before ? String(before.serial) : null,
        reason: null,
        message: null,
        bytes: this.bytes,
        ms: Math.round(performance.now() - t0),
        ...extra,
      };
    };
    if (!this.lock()) {
      return result('busy', { message: `another process (pid ${lockHolder(this.stateDir) ?? '?'}) is applying an update` });
    }
    try {
      this.state = readState(this.stateDir, this.o.feed);
      // leftovers of an apply killed midway (half-built version, downloads): never in force
      this.cleanup(before);
      await this.announceIfChanged(before);
      if (!this.feedUrl) return result('no-feed');
      let res: UpdateResult;
      try {
        const outcome = await this.pullAndApply(before);
        res = result(outcome);
      } catch (err) {
        const e = err instanceof UpdateRefusedError ? err : new UpdateRefusedError(Refusal.io, errorMessage(err), { cause: err });
        res = result('refused', { reason: e.reason, message: e.message });
      }
      this.record(res);
      return res;
    } finally {
      this.unlock();
    }
  }

  private record(res: UpdateResult): void {
    const at = this.now().toISOString();
    const s = this.state;
    s.feed = this.o.feed;
    s.lastCheck = { at, outcome: res.outcome, ms: res.ms };
    s.counters[res.outcome]++;
    if (res.outcome === 'refused') {
      s.consecutiveFailures++;
      s.lastRefusal = { at, reason: res.reason ?? Refusal.io, message: res.message ?? '', serial: null };
      this.log.warn({ reason: res.reason, err: res.message, serial: res.serial }, 'list update refused; keeping the lists in force');
    } else {
      s.consecutiveFailures = 0;
      s.lastSuccess = { at, serial: res.serial };
      if (res.outcome === 'applied') {
        s.lastApplied = { at, serial: res.serial ?? '', ms: res.ms, bytes: res.bytes };
        this.log.info({ serial: res.serial, previous: res.previousSerial, bytes: res.bytes, ms: res.ms }, 'list update applied');
      } else {
        this.log.debug({ outcome: res.outcome, serial: res.serial }, 'list update checked');
      }
    }
    try {
      writeFileAtomic(path.join(this.stateDir, 'state.json'), JSON.stringify(s, null, 1) + '\n');
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'writing update state failed');
    }
  }

  // -------------------------------------------------------------------------------------------

  private fetchOpts(what: string, maxBytes: number): FetchOptions {
    return {
      what,
      maxBytes,
      proxy: this.o.parentProxy ?? null,
      ca: this.o.ca ?? null,
      ...(this.o.timeoutMs !== undefined ? { timeoutMs: this.o.timeoutMs } : {}),
      ...(this.o.deadlineMs !== undefined ? { deadlineMs: this.o.deadlineMs } : {}),
      signal: this.abort.signal,
    };
  }

  private url(rel: string): string {
    return new URL(rel, this.feedUrl as string).href;
  }

  /** GET of a small signed document whose size and hash the pointer gave. */
  private async fetchPinned(ref: FileRef, cap: number): Promise<Buffer> {
    if (ref.size > cap) throw new UpdateRefusedError(Refusal.tooLarge, `fetching ${ref.path}: ${ref.size} bytes, limit ${cap}`);
    const r = await fetchBuffer(this.url(ref.path), this.fetchOpts(ref.path, ref.size));
    const body = r.body ?? Buffer.alloc(0);
    this.bytes += body.length;
    if (body.length !== ref.size) throw new UpdateRefusedError(Refusal.sizeMismatch, `fetching ${ref.path}: ${body.length} bytes, expected ${ref.size}`);
    if (sha256(body) !== ref.sha256) throw new UpdateRefusedError(Refusal.hashMismatch, `fetching ${ref.path}: sha256 differs from ${FEED_FILE}`);
    return body;
  }

  private openManifest(bytes: Buffer, ref: FileRef, serial: number): Manifest {
    const m = parseManifest(openEnvelope(bytes, 'gardefou-manifest', this.trusted, ref.path).doc, ref.path);
    if (m.serial !== serial) throw new UpdateRefusedError(Refusal.mixAndMatch, `reading ${ref.path}: serial ${m.serial}, ${FEED_FILE} says ${serial}`);
    return m;
  }

  private checkFresh(what: string, expires: string): void {
    if (Date.parse(expires) <= this.now().getTime()) {
      throw new UpdateRefusedError(Refusal.expired, `checking ${what}: expired at ${expires} (a feed that stopped being re-signed, or a replay)`);
    }
  }

  private async pullAndApply(running: RunningVersion | null): Promise<UpdateOutcome> {
    const runningSerial = running?.serial ?? 0;
    // validators only count for the state they were seen with
    const v = this.state.validators && this.state.validators.serial === runningSerial ? this.state.validators : null;
    const r = await fetchBuffer(this.feedUrl as string, { ...this.fetchOpts(FEED_FILE, MAX_POINTER_BYTES), etag: v?.etag ?? null, lastModified: v?.lastModified ?? null });
    if (r.status === 304 && v) {
      this.checkFresh(FEED_FILE, v.expires);
      return 'not-modified';
    }
    const body = r.body ?? Buffer.alloc(0);
    this.bytes += body.length;
    const { doc } = openEnvelope(body, 'gardefou-feed', this.trusted, FEED_FILE);
    const feed = parseFeed(doc, FEED_FILE);
    this.checkFresh(FEED_FILE, feed.expires);
    if (feed.serial < runningSerial) {
      throw new UpdateRefusedError(Refusal.rollback, `checking ${FEED_FILE}: serial ${feed.serial} is older than the ${runningSerial} in force (rollback refused)`);
    }
    const validators = { etag: r.etag, lastModified: r.lastModified, serial: feed.serial, expires: feed.expires };
    if (feed.serial === runningSerial) {
      this.state.validators = validators;
      return 'up-to-date';
    }
    await this.apply(feed, running);
    this.state.validators = validators;
    return 'applied';
  }

  private async apply(feed: FeedPointer, running: RunningVersion | null): Promise<void> {
    const runningSerial = running?.serial ?? 0;
    const tmpDir = path.join(this.stateDir, 'tmp');
    fs.mkdirSync(tmpDir, { recursive: true });
    const maxBytes = this.o.maxBytes ?? DEFAULT_MAX_BYTES;

    // full manifest: reuse the running one when the feed still builds on it (delta-only update)
    const reuseBase = running !== null && feed.delta !== null && running.fullSerial === feed.full.serial && running.fullManifestSha256 === feed.full.manifest.sha256;
    const fullBytes = reuseBase ? fs.readFileSync(path.join(running.dir, 'full.json')) : await this.fetchPinned(feed.full.manifest, MAX_MANIFEST_BYTES);
    const full = this.openManifest(fullBytes, feed.full.manifest, feed.full.serial);
    if (full.kind !== 'full') throw new UpdateRefusedError(Refusal.malformed, `reading ${feed.full.manifest.path}: expected a full manifest`);
    let delta: DeltaManifest | null = null;
    let deltaBytes: Buffer | null = null;
    if (feed.delta) {
      deltaBytes = await this.fetchPinned(feed.delta.manifest, MAX_MANIFEST_BYTES);
      const m = this.openManifest(deltaBytes, feed.delta.manifest, feed.delta.serial);
      if (m.kind !== 'delta') throw new UpdateRefusedError(Refusal.malformed, `reading ${feed.delta.manifest.path}: expected a delta manifest`);
      if (m.base.serial !== full.serial || m.base.manifestSha256 !== feed.full.manifest.sha256) {
        throw new UpdateRefusedError(Refusal.mixAndMatch, `reading ${feed.delta.manifest.path}: built on ${m.base.serial}, not on the full bundle ${full.serial} of ${FEED_FILE}`);
      }
      delta = m;
    }
    const top: Manifest = delta ?? full;
    this.checkFresh(`manifest ${top.serial}`, top.expires);
    if (top.serial <= runningSerial) {
      throw new UpdateRefusedError(Refusal.rollback, `checking manifest ${top.serial}: not newer than the ${runningSerial} in force (rollback refused)`);
    }
    for (const m of reuseBase ? [top] : [full, top]) {
      if (m.archive.size > maxBytes) throw new UpdateRefusedError(Refusal.tooLarge, `checking manifest ${m.serial}: archive of ${m.archive.size} bytes, limit ${maxBytes}`);
      if (m.archive.unpackedSize > maxBytes * 8) throw new UpdateRefusedError(Refusal.tooLarge, `checking manifest ${m.serial}: ${m.archive.unpackedSize} bytes unpacked, limit ${maxBytes * 8}`);
    }
    await this.phase('verified', top.serial);

    const name = `${top.serial}-${crypto.randomBytes(4).toString('hex')}`;
    const vdir = path.join(this.stateDir, 'versions', name);
    fs.mkdirSync(vdir);
    const tree = path.join(vdir, 'tree');
    // pristine full-bundle files: `tree` for a full state, `base` for a delta state
    const pristine = delta ? path.join(vdir, 'base') : tree;
    const dirs = new Set<string>([vdir]);

    if (reuseBase && running) {
      const from = running.kind === 'delta' ? path.join(running.dir, 'base') : path.join(running.dir, 'tree');
      linkTree(from, pristine, full, dirs);
    } else {
      const archive = path.join(tmpDir, `${full.serial}.tar.gz`);
      const got = await fetchToFile(this.url(full.archive.path), archive, this.fetchOpts(full.archive.path, full.archive.size));
      this.bytes += got.size;
      if (got.size !== full.archive.size) throw new UpdateRefusedError(Refusal.sizeMismatch, `fetching ${full.archive.path}: ${got.size} bytes, manifest says ${full.archive.size}`);
      if (got.sha256 !== full.archive.sha256) throw new UpdateRefusedError(Refusal.hashMismatch, `fetching ${full.archive.path}: sha256 differs from manifest ${full.serial}`);
      await this.phase('downloaded', top.serial);
      await this.unpack(archive, full, pristine, dirs, top.serial);
      fs.rmSync(archive, { force: true });
    }

    if (delta) {
      const body = await this.fetchPinned({ path: delta.archive.path, sha256: delta.archive.sha256, size: delta.archive.size }, maxBytes);
      const parsed = parseDeltaBody(body, delta.archive.unpackedSize, delta.archive.path);
      const changed = applyDelta((p) => readOrNull(path.join(pristine, p)), parsed, delta, delta.archive.path);
      const removed = new Set(delta.removed);
      linkTree(pristine, tree, { files: full.files.filter((f) => !removed.has(f.path) && !changed.has(f.path)), links: full.links }, dirs);
      for (const [p, content] of changed) {
        const file = path.join(tree, p);
        mkdirp(path.dirname(file), dirs);
        writeFileSynced(file, content, 0o644);
      }
      await this.phase('unpacked', top.serial);
    }
    fs.writeFileSync(path.join(vdir, 'full.json'), fullBytes);
    if (deltaBytes) fs.writeFileSync(path.join(vdir, 'delta.json'), deltaBytes);

    const info: AppliedInfo = { listsPath: path.join(vdir, 'lists.idx'), policyPath: path.join(vdir, COMPOSED_POLICY), serial: String(top.serial), sourcePath: path.join(tree, 'lists') };
    try {
      await compileLists(info.sourcePath, info.listsPath);
    } catch (err) {
      throw new UpdateRefusedError(Refusal.compile, `compiling bundle ${top.serial}: ${errorMessage(err)}`, { cause: err });
    }
    try {
      // the new lists and policy must load into an engine before they may go live
      const loaded = await loadLists(info.listsPath);
      await composePolicy({ dasenPolicy: path.join(tree, POLICY_PATH), schoolPolicy: this.o.schoolPolicy ?? null, lists: info.listsPath, out: info.policyPath, loaded, log: this.log });
      createPolicyEngine(loaded, info.policyPath, info.serial);
      if (this.o.validate) await this.o.validate(info);
    } catch (err) {
      throw new UpdateRefusedError(Refusal.policy, `loading bundle ${top.serial} into a policy engine: ${errorMessage(err)}`, { cause: err });
    }
    await this.phase('compiled', top.serial);
    const version: Omit<RunningVersion, 'name' | 'dir' | 'listsPath' | 'policyPath' | 'sourcePath'> = {
      serial: top.serial,
      fullSerial: full.serial,
      fullManifestSha256: sha256(fullBytes),
      kind: top.kind,
      created: top.created,
      expires: top.expires,
      keyid: openEnvelope(deltaBytes ?? fullBytes, 'gardefou-manifest', this.trusted, 'manifest').keyid,
      appliedAt: this.now().toISOString(),
    };
    fs.writeFileSync(path.join(vdir, 'version.json'), JSON.stringify(version, null, 1) + '\n');
    for (const f of ['full.json', 'delta.json', 'version.json']) if (f !== 'delta.json' || deltaBytes) fsyncPath(path.join(vdir, f));
    fsyncTree(vdir, dirs);
    await this.phase('synced', top.serial);

    // the switch: one rename of a symbolic link
    const link = path.join(this.stateDir, `current.tmp-${process.pid}`);
    fs.rmSync(link, { force: true });
    fs.symlinkSync(path.join('versions', name), link);
    fs.renameSync(link, path.join(this.stateDir, 'current'));
    fsyncPath(this.stateDir);
    await this.phase('switched', top.serial);
    this.log.info({ serial: top.serial, kind: top.kind, base: full.serial, keyid: version.keyid.slice(0, 16) }, 'new lists in force');
    this.cleanup(readCurrent(this.stateDir), running?.name ?? null);
    await this.announceIfChanged(running);
  }

  private async unpack(archive: string, m: FullManifest, dest: string, dirs: Set<string>, serial: number): Promise<void> {
    mkdirp(dest, dirs);
    let n = 0;
    await this.phase('unpacking', serial);
    await readTarStrict(
      fs.createReadStream(archive, { highWaterMark: 1 << 20 }).pipe(zlib.createGunzip()),
      m,
      async (f) => {
        const file = path.join(dest, f.path);
        mkdirp(path.dirname(file), dirs);
        const fh = await fs.promises.open(file, 'wx', 0o644);
        if (++n === Math.ceil(m.files.length / 2)) await this.phase('half-unpacked', serial);
        return {
          write: async (c: Buffer) => {
            await fh.write(c);
          },
          close: async () => {
            await fh.sync();
            await fh.close();
          },
        };
      },
      (l) => {
        const file = path.join(dest, l.path);
        mkdirp(path.dirname(file), dirs);
        fs.symlinkSync(l.link, file);
      },
      m.archive.path,
    );
    await this.phase('unpacked', serial);
  }

  private async phase(p: ApplyPhase, serial: number): Promise<void> {
    if (this.o.onPhase) await this.o.onPhase(p, serial);
  }

  /**
   * Recomposes the policy of the version in force with the school's file (after the school
   * edited its local entries; `serve` calls it on SIGHUP). Contradicting entries are refused and
   * returned; null when no bundle is in force.
   */
  async recomposeLocal(): Promise<ComposeResult | null> {
    const cur = readCurrent(this.stateDir);
    if (!cur) return null;
    return composePolicy({ dasenPolicy: path.join(cur.dir, 'tree', POLICY_PATH), schoolPolicy: this.o.schoolPolicy ?? null, lists: cur.listsPath, out: cur.policyPath, log: this.log });
  }

  /** Tells the serving process about a version it has not loaded yet (applied here or by another process). */
  private async announceIfChanged(_before: RunningVersion | null): Promise<void> {
    const cur = readCurrent(this.stateDir);
    if (!cur || cur.name === this.announced) return;
    this.announced = cur.name;
    const info: AppliedInfo = { listsPath: cur.listsPath, policyPath: cur.policyPath, serial: String(cur.serial), sourcePath: cur.sourcePath };
    this.emit('applied', info);
    if (this.o.onApplied) {
      try {
        await this.o.onApplied(info);
      } catch (err) {
        this.log.error({ err: errorMessage(err), serial: info.serial }, 'loading the new lists into the proxy failed; the previous ones stay in force in this process');
      }
    }
  }

  /** Removes tmp files and versions other than the one in force and the previous one. */
  private cleanup(cur: RunningVersion | null, previous: string | null = null): void {
    fs.rmSync(path.join(this.stateDir, 'tmp'), { recursive: true, force: true });
    const keep = new Set([cur?.name, previous].filter((x): x is string => !!x));
    // without `previous`, keep the newest other complete version for manual fallback
    const vroot = path.join(this.stateDir, 'versions');
    let names: string[] = [];
    try {
      names = fs.readdirSync(vroot);
    } catch {
      return;
    }
    if (previous === null) {
      const complete = names
        .filter((n) => n !== cur?.name && fs.existsSync(path.join(vroot, n, 'version.json')))
        .sort((a, b) => Number(b.split('-')[0]) - Number(a.split('-')[0]));
      if (complete[0]) keep.add(complete[0]);
    }
    for (const n of names) {
      if (keep.has(n)) continue;
      try {
        fs.rmSync(path.join(vroot, n), { recursive: true, force: true });
      } catch (err) {
        this.log.warn({ version: n, err: errorMessage(err) }, 'removing an old list version failed');
      }
    }
  }

  private lock(): boolean {
    const file = path.join(this.stateDir, 'update.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(file, 'wx', 0o644);
        fs.writeSync(fd, `${process.pid}\n`);
        fs.closeSync(fd);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = lockHolder(this.stateDir);
        if (holder !== null && holder !== process.pid) return false;
        // stale (its process is gone, e.g. killed mid-apply) or our own leftover
        fs.rmSync(file, { force: true });
      }
    }
    return false;
  }

  private unlock(): void {
    fs.rmSync(path.join(this.stateDir, 'update.lock'), { force: true });
  }
}

// ---------------------------------------------------------------------------------------------

/** A feed URL may name feed.json or the folder holding it. */
export function pointerUrl(feed: string): string {
  const u = new URL(feed);
  if (u.pathname.endsWith('/')) u.pathname += FEED_FILE;
  else if (!u.pathname.endsWith('.json')) u.pathname += `/${FEED_FILE}`;
  return u.href;
}

function readOrNull(file: string): Buffer | null {
  try {
    return fs.readFileSync(file);
  } catch {
    return null;
  }
}

function mkdirp(dir: string, dirs: Set<string>): void {
  if (dirs.has(dir)) return;
  fs.mkdirSync(dir, { recursive: true });
  for (let d = dir; !dirs.has(d) && d.length > 1; d = path.dirname(d)) dirs.add(d);
}

/** fsync every folder created for a version, deepest first, so every entry is durable. */
function fsyncTree(_vdir: string, dirs: Set<string>): void {
  for (const d of [...dirs].sort((a, b) => b.length - a.length)) {
    try {
      fsyncPath(d);
    } catch {
      // a folder outside the version (parents) may be read-only: its entries did not change
    }
  }
}

/** Hard-links the listed files (and recreates links) from one tree into another. */
function linkTree(from: string, to: string, m: { files: readonly FileRef[]; links: FullManifest['links'] }, dirs: Set<string>): void {
  mkdirp(to, dirs);
  for (const f of m.files) {
    const dest = path.join(to, f.path);
    mkdirp(path.dirname(dest), dirs);
    try {
      fs.linkSync(path.join(from, f.path), dest);
    } catch (err) {
      throw new UpdateRefusedError(Refusal.io, `preparing the new version: ${f.path} of the running bundle is missing (${errorMessage(err)})`);
    }
  }
  for (const l of m.links) {
    const dest = path.join(to, l.path);
    mkdirp(path.dirname(dest), dirs);
    fs.symlinkSync(l.link, dest);
  }
}

// ---------------------------------------------------------------------------------------------

/** Prometheus text exposition of the update status (for the admin listener's /metrics). */
export function renderUpdateMetrics(s: UpdateStatus): string {
  const out: string[] = [];
  const metric = (name: string, help: string, type: 'gauge' | 'counter', samples: Array<[string, number]>) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 0}`);
  };
  const ts = (iso: string | undefined | null) => (iso ? Date.parse(iso) / 1000 : 0);
  const r = s.running;
  metric('gardefou_lists_serial', 'Serial of the DASEN list bundle in force (0: none).', 'gauge', [['', r ? Number(r.serial) : 0]]);
  metric('gardefou_lists_bundle_age_seconds', 'Age of the bundle in force, from its creation by the DASEN.', 'gauge', [['', r ? r.ageSeconds : 0]]);
  metric('gardefou_lists_bundle_expires_timestamp_seconds', 'When the bundle in force expires.', 'gauge', [['', ts(r?.expires)]]);
  metric('gardefou_lists_bundle_expired', '1 when the bundle in force has expired (no fresh signed bundle reached the gateway).', 'gauge', [['', r?.expired ? 1 : 0]]);
  metric('gardefou_update_last_check_timestamp_seconds', 'Last check of the feed.', 'gauge', [['', ts(s.lastCheck?.at)]]);
  metric('gardefou_update_last_success_timestamp_seconds', 'Last check that ended with the newest lists in force.', 'gauge', [['', ts(s.lastSuccess?.at)]]);
  metric('gardefou_update_last_refusal_timestamp_seconds', 'Last refused or failed update.', 'gauge', [['', ts(s.lastRefusal?.at)]]);
  metric('gardefou_update_consecutive_failures', 'Checks refused or failed in a row.', 'gauge', [['', s.consecutiveFailures]]);
  metric(
    'gardefou_update_checks_total',
    'Feed checks by outcome.',
    'counter',
    Object.entries(s.counters).map(([k, v]) => [`{outcome="${k}"}`, v]),
  );
  if (s.lastRefusal) metric('gardefou_update_last_refusal_info', 'Reason of the last refusal (value 1).', 'gauge', [[`{reason="${s.lastRefusal.reason}"}`, 1]]);
  return out.join('\n') + '\n';
}

/**
 * Re-checks the version in force against its signed manifests: every file of the tree has the
 * size and sha256 the manifests give (full + delta), nothing is missing, the index exists.
 * For operators (`update --status --verify`) and the crash tests.
 */
export async function verifyInstalled(stateDir: string, trustedKeys: readonly string[]): Promise<{ ok: boolean; serial: number | null; problems: string[] }> {
  const cur = readCurrent(stateDir);
  if (!cur) return { ok: true, serial: null, problems: [] };
  const problems: string[] = [];
  try {
    const trusted = loadTrustedKeys(trustedKeys);
    const full = parseManifest(openEnvelope(fs.readFileSync(path.join(cur.dir, 'full.json')), 'gardefou-manifest', trusted, 'full.json').doc, 'full.json');
    if (full.kind !== 'full') throw new Error('full.json is not a full manifest');
    let delta: DeltaManifest | null = null;
    if (cur.kind === 'delta') {
      const m = parseManifest(openEnvelope(fs.readFileSync(path.join(cur.dir, 'delta.json')), 'gardefou-manifest', trusted, 'delta.json').doc, 'delta.json');
      if (m.kind !== 'delta') throw new Error('delta.json is not a delta manifest');
      delta = m;
    }
    if ((delta ?? full).serial !== cur.serial) problems.push(`version.json says serial ${cur.serial}, manifests say ${(delta ?? full).serial}`);
    const tree = path.join(cur.dir, 'tree');
    const want = effectiveFiles(full, delta);
    for (const f of want) {
      const file = path.join(tree, f.path);
      let buf: Buffer;
      try {
        buf = fs.readFileSync(file);
      } catch {
        problems.push(`${f.path}: missing`);
        continue;
      }
      if (buf.length !== f.size || sha256(buf) !== f.sha256) problems.push(`${f.path}: differs from the manifest`);
    }
    const listed = new Set([...want.map((f) => f.path), ...full.links.map((l) => l.path)]);
    const walk = (d: string, rel: string) => {
      for (const n of fs.readdirSync(d)) {
        const r = rel ? `${rel}/${n}` : n;
        const st = fs.lstatSync(path.join(d, n));
        if (st.isDirectory()) walk(path.join(d, n), r);
        else if (!listed.has(r)) problems.push(`${r}: not in the manifests`);
      }
    };
    walk(tree, '');
    if (!fs.existsSync(cur.listsPath)) problems.push('lists.idx missing');
    if (!fs.existsSync(cur.policyPath)) problems.push('policy.json missing');
  } catch (err) {
    problems.push(errorMessage(err));
  }
  return { ok: problems.length === 0, serial: cur.serial, problems };
}

/** The agent as the configuration describes it (`update.*`, `parentProxy`, `policy`). */
export function updateAgentFromConfig(cfg: Config, feed: string, log: Logger, extra: Partial<UpdateAgentOptions> = {}): UpdateAgent {
  return new UpdateAgent({
    feed,
    trustedKeys: cfg.update.trustedKeys,
    stateDir: cfg.update.stateDir,
    intervalSeconds: cfg.update.intervalSeconds,
    parentProxy: cfg.parentProxy,
    schoolPolicy: cfg.policy,
    log,
    ...extra,
  });
}
