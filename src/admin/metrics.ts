/**
 * A small dependency-free Prometheus registry built for the proxy's hot path, and the gardefou
 * metric set defined in one place (createGardefouMetrics).
 *
 * Hot path: a labelled child is found by walking one Map per label with the caller's own
 * strings (no key string is built, no array allocated); children are created once and kept.
 * Values live in plain number fields / Float64Arrays, so incrementing an existing child does
 * not allocate. Everything costly (label text, escaping, callbacks, sorting) happens at scrape.
 *
 * Cardinality: each label has a cap on distinct values (categories come from the lists, ~80;
 * profiles from the policy, a handful). Past the cap a new value is counted as "other", so a
 * hostile or buggy caller cannot grow memory or the scrape without bound.
 *
 * Several processes (cluster workers) can each snapshot() their registry; mergeSnapshots()
 * sums counters and histograms and combines gauges as each gauge says (sum, max, min), and
 * renderSnapshot() prints the result: one /metrics for the whole gateway.
 *
 * Output: Prometheus text exposition format 0.0.4 (CONTENT_TYPE below).
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Label value used once a label has reached its cap of distinct values. */
export const OTHER = 'other';

export type MetricType = 'counter' | 'gauge' | 'histogram';
/** How a gauge of several processes is combined by mergeSnapshots. */
export type GaugeMerge = 'sum' | 'max' | 'min';

export interface FamilyOptions {
  /** Distinct values allowed per label (one number for all labels, or one per label). Default 64. */
  maxValues?: number | readonly number[];
  /** Label value tuples created up front (so they render as 0 before the first event). */
  preset?: ReadonlyArray<readonly string[]>;
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const DEFAULT_MAX_VALUES = 64;

/* ------------------------------------------------------------------------------------------ */
/* Children: the objects the hot path holds on to.                                             */

export class CounterChild {
  /** @internal */ value = 0;
  constructor(/** @internal */ readonly labelText: string) {}
  /** Adds n (default 1). Negative or NaN increments are ignored: a counter never goes down. */
  inc(n = 1): void {
    if (n > 0) this.value += n;
  }
  get(): number {
    return this.value;
  }
}

export class GaugeChild {
  /** @internal */ value = 0;
  constructor(/** @internal */ readonly labelText: string) {}
  set(v: number): void {
    this.value = v;
  }
  inc(n = 1): void {
    this.value += n;
  }
  dec(n = 1): void {
    this.value -= n;
  }
  get(): number {
    return this.value;
  }
}

export class HistogramChild {
  /** per-bucket counts, NOT cumulative; the last slot is the +Inf overflow */
  /** @internal */ readonly counts: Float64Array;
  /** @internal */ sum = 0;
  /** @internal */ count = 0;
  constructor(/** @internal */ readonly labelText: string, /** @internal */ readonly bounds: Float64Array) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  /** Records one observation (seconds, bytes...). NaN is ignored. */
  observe(v: number): void {
    if (v !== v) return; // NaN
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > (b[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += v;
    this.count++;
  }
}

type Child = CounterChild | GaugeChild | HistogramChild;
type Node = Map<string, Node | Child>;

/* ------------------------------------------------------------------------------------------ */
/* Families                                                                                    */

class Family<C extends Child> {
  /** @internal */ readonly children: C[] = [];
  private readonly root: Node | C | null;
  private readonly seen: Array<Set<string>>;
  private readonly caps: number[];
  /** admitted values of the walk in progress, reused (single thread): no per-call array */
  private readonly path: string[];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: MetricType,
    readonly labelNames: readonly string[],
    opts: FamilyOptions,
    private readonly make: (labelText: string) => C,
  ) {
    if (!NAME_RE.test(name)) throw new Error(`metric name "${name}" is not valid`);
    if (labelNames.length > 4) throw new Error(`metric ${name}: at most 4 labels, got ${labelNames.length}`);
    for (const l of labelNames) {
      if (!LABEL_RE.test(l) || l.startsWith('__')) throw new Error(`metric ${name}: label name "${l}" is not valid`);
      if (type === 'histogram' && l === 'le') throw new Error(`metric ${name}: "le" is reserved for histogram buckets`);
    }
    if (new Set(labelNames).size !== labelNames.length) throw new Error(`metric ${name}: duplicate label names`);
    const mv = opts.maxValues ?? DEFAULT_MAX_VALUES;
    this.caps = labelNames.map((_, i) => (typeof mv === 'number' ? mv : mv[i] ?? DEFAULT_MAX_VALUES));
    this.seen = labelNames.map(() => new Set<string>());
    this.path = labelNames.map(() => '');
    if (labelNames.length === 0) {
      const only = make('');
      this.children.push(only);
      this.root = only;
    } else {
      this.root = new Map();
    }
    for (const values of opts.preset ?? []) {
      if (values.length !== labelNames.length) throw new Error(`metric ${name}: preset ${JSON.stringify(values)} needs ${labelNames.length} values`);
      this.child(values[0], values[1], values[2], values[3]);
    }
  }

  /**
   * The child for these label values, created on first use. Give one value per label, in the
   * order of labelNames. Fixed arity on purpose: no rest array on the hot path. An existing
   * child is found with one Map lookup per label and no allocation.
   */
  child(a?: string, b?: string, c?: string, d?: string): C {
    const n = this.labelNames.length;
    if (n === 0) return this.root as C;
    let node = this.root as Node;
    for (let i = 0; i < n; i++) {
      let v = (i === 0 ? a : i === 1 ? b : i === 2 ? c : d) ?? '';
      let next = node.get(v);
      if (next === undefined) {
        v = this.admit(i, v);
        next = node.get(v);
        if (next === undefined) {
          this.path[i] = v;
          if (i === n - 1) {
            const made = this.make(labelText(this.labelNames, this.path));
            this.children.push(made);
            next = made;
          } else {
            next = new Map();
          }
          node.set(v, next);
        }
      }
      this.path[i] = v;
      if (i === n - 1) return next as C;
      node = next as Node;
    }
    /* c8 ignore next */
    throw new Error('unreachable');
  }

  /** Label value as counted: the value itself while under the cap, else "other". */
  private admit(i: number, v: string): string {
    const seen = this.seen[i] as Set<string>;
    if (seen.has(v)) return v;
    if (seen.size >= (this.caps[i] as number) && v !== OTHER) return OTHER;
    seen.add(v);
    return v;
  }

  /** Number of children (label tuples) in existence: bounded by the caps. */
  get size(): number {
    return this.children.length;
  }

  /** @internal */ snapshotSamples(): SampleSnapshot[] {
    return this.children.map((c) => sampleOf(c));
  }
}

export class CounterFamily extends Family<CounterChild> {
  constructor(name: string, help: string, labelNames: readonly string[], opts: FamilyOptions) {
    super(name, help, 'counter', labelNames, opts, (t) => new CounterChild(t));
  }
  /** Shortcut for unlabelled counters. */
  inc(n = 1): void {
    this.child().inc(n);
  }
}

export class GaugeFamily extends Family<GaugeChild> {
  constructor(name: string, help: string, labelNames: readonly string[], opts: FamilyOptions, readonly merge: GaugeMerge) {
    super(name, help, 'gauge', labelNames, opts, (t) => new GaugeChild(t));
  }
  set(v: number): void {
    this.child().set(v);
  }
}

export class HistogramFamily extends Family<HistogramChild> {
  readonly bounds: Float64Array;
  constructor(name: string, help: string, buckets: readonly number[], labelNames: readonly string[], opts: FamilyOptions) {
    const bounds = checkBuckets(name, buckets);
    super(name, help, 'histogram', labelNames, opts, (t) => new HistogramChild(t, bounds));
    this.bounds = bounds;
  }
  observe(v: number): void {
    this.child().observe(v);
  }
}

function checkBuckets(name: string, buckets: readonly number[]): Float64Array {
  if (buckets.length === 0) throw new Error(`histogram ${name}: at least one bucket is needed`);
  for (let i = 0; i < buckets.length; i++) {
    const b = buckets[i] as number;
    if (!Number.isFinite(b)) throw new Error(`histogram ${name}: bucket ${b} is not finite (+Inf is implicit)`);
    if (i > 0 && b <= (buckets[i - 1] as number)) throw new Error(`histogram ${name}: buckets must increase, got ${buckets.join(', ')}`);
  }
  return Float64Array.from(buckets);
}

/* ------------------------------------------------------------------------------------------ */
/* Snapshots: plain JSON data, mergeable across processes.                                    */

export interface SampleSnapshot {
  /** rendered label pairs without braces: `a="x",b="y"`; '' when unlabelled */
  labels: string;
  /** counter or gauge value */
  value?: number;
  /** histogram: per-bucket (non-cumulative) counts, last = +Inf; sum; count */
  counts?: number[];
  sum?: number;
  count?: number;
}

export interface FamilySnapshot {
  name: string;
  help: string;
  type: MetricType;
  merge?: GaugeMerge;
  buckets?: number[];
  samples: SampleSnapshot[];
}

function sampleOf(c: Child): SampleSnapshot {
  if (c instanceof HistogramChild) return { labels: c.labelText, counts: Array.from(c.counts), sum: c.sum, count: c.count };
  return { labels: c.labelText, value: c.value };
}

/** A gauge read at scrape time. Return null (or throw) to omit the sample. */
export type GaugeCallback = () => number | null;

interface CallbackGauge {
  name: string;
  help: string;
  merge: GaugeMerge;
  samples: Array<{ labels: string; fn: GaugeCallback }>;
  type: 'gauge' | 'counter';
}

export class Registry {
  private readonly families: Array<Family<Child> | CallbackGauge> = [];
  private readonly names = new Set<string>();
  private readonly beforeCollect: Array<() => void> = [];
  private readonly afterCollect: Array<() => void> = [];

  private claim(name: string): void {
    if (!NAME_RE.test(name)) throw new Error(`metric name "${name}" is not valid`);
    if (this.names.has(name)) throw new Error(`metric ${name} is already registered`);
    this.names.add(name);
  }

  counter(name: string, help: string, labelNames: readonly string[] = [], opts: FamilyOptions = {}): CounterFamily {
    this.claim(name);
    const f = new CounterFamily(name, help, labelNames, opts);
    this.families.push(f as Family<Child>);
    return f;
  }

  gauge(name: string, help: string, labelNames: readonly string[] = [], opts: FamilyOptions & { merge?: GaugeMerge } = {}): GaugeFamily {
    this.claim(name);
    const f = new GaugeFamily(name, help, labelNames, opts, opts.merge ?? 'sum');
    this.families.push(f as Family<Child>);
    return f;
  }

  histogram(name: string, help: string, buckets: readonly number[], labelNames: readonly string[] = [], opts: FamilyOptions = {}): HistogramFamily {
    this.claim(name);
    const f = new HistogramFamily(name, help, buckets, labelNames, opts);
    this.families.push(f as Family<Child>);
    return f;
  }

  /**
   * A gauge (or a counter kept elsewhere, type 'counter') whose value is read at scrape time.
   * `samples`: one callback, or label values -> callback (fixed at registration).
   */
  callback(
    name: string,
    help: string,
    samples: GaugeCallback | ReadonlyArray<{ labels: Readonly<Record<string, string>>; fn: GaugeCallback }>,
    opts: { merge?: GaugeMerge; type?: 'gauge' | 'counter' } = {},
  ): void {
    this.claim(name);
    const list = typeof samples === 'function'
      ? [{ labels: '', fn: samples }]
      : samples.map((s) => {
        const names = Object.keys(s.labels);
        for (const l of names) if (!LABEL_RE.test(l) || l.startsWith('__')) throw new Error(`metric ${name}: label name "${l}" is not valid`);
        return { labels: labelText(names, names.map((k) => s.labels[k] as string)), fn: s.fn };
      });
    this.families.push({ name, help, merge: opts.merge ?? 'sum', samples: list, type: opts.type ?? 'gauge' });
  }

  /** Runs `fn` before every collection (e.g. read process.memoryUsage() once for several gauges). */
  onCollect(fn: () => void): void {
    this.beforeCollect.push(fn);
  }

  /** Runs `fn` after every collection (e.g. reset a per-interval histogram). */
  afterEachCollect(fn: () => void): void {
    this.afterCollect.push(fn);
  }

  /** Current values as plain data (for mergeSnapshots across processes, or renderSnapshot). */
  snapshot(): FamilySnapshot[] {
    for (const fn of this.beforeCollect) fn();
    const out: FamilySnapshot[] = [];
    for (const f of this.families) {
      if (f instanceof Family) {
        const s: FamilySnapshot = { name: f.name, help: f.help, type: f.type, samples: f.snapshotSamples() };
        if (f instanceof GaugeFamily) s.merge = f.merge;
        if (f instanceof HistogramFamily) s.buckets = Array.from(f.bounds);
        out.push(s);
      } else {
        const samples: SampleSnapshot[] = [];
        for (const s of f.samples) {
          let v: number | null;
          try {
            v = s.fn();
          } catch {
            v = null; // a broken source must not break the whole scrape
          }
          if (v !== null) samples.push({ labels: s.labels, value: v });
        }
        out.push({ name: f.name, help: f.help, type: f.type, merge: f.merge, samples });
      }
    }
    for (const fn of this.afterCollect) fn();
    return out;
  }

  /** The text exposition (format 0.0.4) of everything registered. */
  render(): string {
    return renderSnapshot(this.snapshot());
  }
}

/**
 * Combines snapshots of several processes with the same metric set: counters and histograms
 * add up; gauges combine by their `merge` (sum, max, min). Families and samples keep the order
 * of their first appearance.
 */
export function mergeSnapshots(parts: ReadonlyArray<readonly FamilySnapshot[]>): FamilySnapshot[] {
  const byName = new Map<string, { fam: FamilySnapshot; samples: Map<string, SampleSnapshot> }>();
  for (const part of parts) {
    for (const f of part) {
      let m = byName.get(f.name);
      if (!m) {
        const fam: FamilySnapshot = { name: f.name, help: f.help, type: f.type, samples: [] };
        if (f.merge) fam.merge = f.merge;
        if (f.buckets) fam.buckets = [...f.buckets];
        m = { fam, samples: new Map() };
        byName.set(f.name, m);
      } else if (m.fam.type !== f.type || JSON.stringify(m.fam.buckets) !== JSON.stringify(f.buckets)) {
        throw new Error(`merging metrics: ${f.name} differs between processes (type or buckets)`);
      }
      for (const s of f.samples) {
        const prev = m.samples.get(s.labels);
        if (!prev) {
          const copy: SampleSnapshot = { ...s };
          if (s.counts) copy.counts = [...s.counts];
          m.samples.set(s.labels, copy);
          m.fam.samples.push(copy);
          continue;
        }
        if (s.counts && prev.counts) {
          for (let i = 0; i < s.counts.length; i++) prev.counts[i] = (prev.counts[i] ?? 0) + (s.counts[i] as number);
          prev.sum = (prev.sum ?? 0) + (s.sum ?? 0);
          prev.count = (prev.count ?? 0) + (s.count ?? 0);
        } else {
          const a = prev.value ?? 0;
          const b = s.value ?? 0;
          const how = m.fam.type === 'gauge' ? m.fam.merge ?? 'sum' : 'sum';
          prev.value = how === 'max' ? Math.max(a, b) : how === 'min' ? Math.min(a, b) : a + b;
        }
      }
    }
  }
  return [...byName.values()].map((m) => m.fam);
}

/** Prints snapshots in the text exposition format 0.0.4. */
export function renderSnapshot(fams: readonly FamilySnapshot[]): string {
  let out = '';
  for (const f of fams) {
    out += `# HELP ${f.name} ${escapeHelp(f.help)}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      if (f.type === 'histogram') {
        const counts = s.counts ?? [];
        const bounds = f.buckets ?? [];
        const sep = s.labels === '' ? '' : ',';
        let cum = 0;
        for (let i = 0; i <= bounds.length; i++) {
          cum += counts[i] ?? 0;
          const le = i < bounds.length ? formatValue(bounds[i] as number) : '+Inf';
          out += `${f.name}_bucket{${s.labels}${sep}le="${le}"} ${formatValue(cum)}\n`;
        }
        const braces = s.labels === '' ? '' : `{${s.labels}}`;
        out += `${f.name}_sum${braces} ${formatValue(s.sum ?? 0)}\n${f.name}_count${braces} ${formatValue(s.count ?? 0)}\n`;
      } else {
        out += `${f.name}${s.labels === '' ? '' : `{${s.labels}}`} ${formatValue(s.value ?? 0)}\n`;
      }
    }
  }
  return out;
}

/** `a="x",b="y"` with values escaped as the format requires (\\, \", \n). */
export function labelText(names: readonly string[], values: readonly string[]): string {
  let s = '';
  for (let i = 0; i < names.length; i++) {
    if (i > 0) s += ',';
    s += `${names[i] as string}="${escapeLabelValue(values[i] ?? '')}"`;
  }
  return s;
}

export function escapeLabelValue(v: string): string {
  return v.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
}

function escapeHelp(v: string): string {
  return v.replace(/[\\\n]/g, (c) => (c === '\n' ? '\\n' : '\\\\'));
}

export function formatValue(v: number): string {
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  if (v !== v) return 'NaN';
  return String(v);
}

/* ------------------------------------------------------------------------------------------ */
/* The gardefou metric set.                                                                    */

/** Buckets of the journal commit latency (seconds): group commits take a few ms. */
export const COMMIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] as const;
/** Buckets of request / tunnel duration (seconds): from cached small GETs to long tunnels. */
export const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800] as const;

/** Decisions as the journal records them (JournalDecision); anything else counts as "other". */
export const DECISIONS = ['allow', 'block', 'refused', 'error'] as const;
export const UPDATE_RESULTS = ['success', 'refused', 'error'] as const;
/** Label caps. Categories: UT1 has ~80 (+ "none"); profiles: a handful per school. */
export const MAX_CATEGORIES = 128;
export const MAX_PROFILES = 32;
export const MAX_UPDATE_REASONS = 32;
/** Label value for a missing category / profile (refusals, unlisted hosts). */
export const NONE = 'none';

/** Read at scrape time; each may be left out (its gauge is then omitted). */
export interface GardefouSources {
  tunnelsOpen?: () => number;
  journalQueueDepth?: () => number;
  /** records begun but not yet in the requisition index (journal.index.db), or null before its first step */
  journalIndexLag?: () => number | null;
  /** whether the indexer's last step succeeded */
  journalIndexHealthy?: () => boolean;
  /** serial of the lists in force (numeric), or null when the lists are not from a bundle */
  listSerial?: () => number | null;
  /** when the lists in force were published (ms since epoch), or null when unknown */
  listCreatedMs?: () => number | null;
  /** a Unix time (ms) source, for tests */
  nowMs?: () => number;
}

export interface GardefouMetricsOptions {
  sources?: GardefouSources;
  /** sample event-loop delay with perf_hooks (default true); close() stops it */
  eventLoop?: boolean;
  /** resolution of the event-loop sampler in ms (default 10) */
  eventLoopResolutionMs?: number;
}

export interface GardefouMetrics {
  readonly registry: Registry;
  /**
   * One finished request or tunnel: counts it and its bytes. decision: allow | block | refused |
   * error (the journal's); category / profile null for none. bytesIn: read from the client
   * (uploads); bytesOut: written to the client (downloads) — as JournalClose.
   */
  request(decision: string, category: string | null, profile: string | null, bytesIn: number, bytesOut: number): void;
  /** Bytes only (e.g. periodically for a long tunnel, then request(..., 0, 0) at its end). */
  bytes(decision: string, bytesIn: number, bytesOut: number): void;
  /** Duration of one request ('http'; 'https': inside an intercepted tunnel) or tunnel ('connect'), seconds. */
  requestDuration(protocol: 'http' | 'connect' | 'https', seconds: number): void;
  /** One journal group commit took `seconds`. */
  journalCommit(seconds: number): void;
  /** Records the journal could not keep (must stay 0: the law's record). */
  journalRecordsLost(n?: number): void;
  /** One list update attempt: result success | refused | error, reason a short stable code. */
  update(result: string, reason: string): void;
  /** Sets or replaces scrape-time sources (the proxy and journal exist after the metrics). */
  setSources(sources: GardefouSources): void;
  /** Text exposition of this process. */
  render(): string;
  /** Plain data of this process, for mergeSnapshots() in a cluster primary. */
  snapshot(): FamilySnapshot[];
  /** Stops the event-loop sampler. */
  close(): void;
}

/**
 * The gardefou metrics:
 *   gardefou_requests_total{decision,category,profile}   counter
 *   gardefou_bytes_total{direction,decision}             counter, direction in|out (from|to client)
 *   gardefou_request_duration_seconds{protocol}          histogram, http|connect
 *   gardefou_tunnels_open                                gauge (callback)
 *   gardefou_journal_queue_depth                         gauge (callback)
 *   gardefou_journal_commit_seconds                      histogram
 *   gardefou_journal_records_lost_total                  counter
 *   gardefou_journal_index_lag_records                   gauge (callback): records not yet indexed
 *   gardefou_journal_index_healthy                       gauge (callback): 1, or 0 when the indexer fails
 *   gardefou_list_serial                                 gauge (callback; min over processes)
 *   gardefou_list_age_seconds                            gauge (callback; max over processes)
 *   gardefou_update_total{result,reason}                 counter
 *   gardefou_event_loop_lag_seconds                      gauge, p99 since the previous scrape
 *   gardefou_event_loop_lag_max_seconds                  gauge, max since the previous scrape
 *   process_resident_memory_bytes, process_cpu_seconds_total, process_start_time_seconds,
 *   nodejs_heap_used_bytes, nodejs_heap_total_bytes, nodejs_external_memory_bytes
 */
export function createGardefouMetrics(opts: GardefouMetricsOptions = {}): GardefouMetrics {
  const reg = new Registry();
  let src: GardefouSources = { ...(opts.sources ?? {}) };

  const requests = reg.counter('gardefou_requests_total', 'Requests and tunnels handled, by decision, category and profile.',
    ['decision', 'category', 'profile'], { maxValues: [DECISIONS.length + 1, MAX_CATEGORIES, MAX_PROFILES] });
  const bytes = reg.counter('gardefou_bytes_total', 'Bytes exchanged with clients; direction in: read from the client, out: written to it.',
    ['direction', 'decision'], { maxValues: [2, DECISIONS.length + 1], preset: DECISIONS.flatMap((d) => [['in', d], ['out', d]]) });
  const duration = reg.histogram('gardefou_request_duration_seconds', 'Duration of requests (http) and tunnels (connect), in seconds.',
    DURATION_BUCKETS, ['protocol'], { maxValues: 3, preset: [['http'], ['connect']] });
  reg.callback('gardefou_tunnels_open', 'CONNECT tunnels open now.', () => (src.tunnelsOpen ? src.tunnelsOpen() : null));
  reg.callback('gardefou_journal_queue_depth', 'Journal records waiting to be committed.', () => (src.journalQueueDepth ? src.journalQueueDepth() : null));
  const commit = reg.histogram('gardefou_journal_commit_seconds', 'Latency of journal group commits, in seconds.', COMMIT_BUCKETS);
  const lost = reg.counter('gardefou_journal_records_lost_total', 'Journal records that could not be kept (must stay 0).');
  reg.callback('gardefou_journal_index_lag_records', 'Journal records not yet in the requisition index (queries read them unindexed).',
    () => (src.journalIndexLag ? src.journalIndexLag() : null));
  reg.callback('gardefou_journal_index_healthy', 'Whether the requisition index is being updated (0: the indexer fails; records are kept).',
    () => (src.journalIndexHealthy ? (src.journalIndexHealthy() ? 1 : 0) : null));
  reg.callback('gardefou_list_serial', 'Serial of the list bundle in force.', () => (src.listSerial ? src.listSerial() : null), { merge: 'min' });
  reg.callback('gardefou_list_age_seconds', 'Age of the list bundle in force (since its publication), in seconds.', () => {
    const created = src.listCreatedMs ? src.listCreatedMs() : null;
    if (created === null) return null;
    return Math.max(0, ((src.nowMs ?? Date.now)() - created) / 1000);
  }, { merge: 'max' });
  const updates = reg.counter('gardefou_update_total', 'List update attempts, by result and reason.', ['result', 'reason'],
    { maxValues: [UPDATE_RESULTS.length + 1, MAX_UPDATE_REASONS] });

  let loop: IntervalHistogram | null = null;
  if (opts.eventLoop !== false) {
    loop = monitorEventLoopDelay({ resolution: opts.eventLoopResolutionMs ?? 10 });
    loop.enable();
  }
  let lagP99 = 0;
  let lagMax = 0;
  let mem = process.memoryUsage();
  reg.onCollect(() => {
    mem = process.memoryUsage();
    if (loop) {
      // nanoseconds; an interval without samples reports 0
      lagP99 = loop.count > 0 ? loop.percentile(99) / 1e9 : 0;
      lagMax = loop.count > 0 ? loop.max / 1e9 : 0;
    }
  });
  reg.afterEachCollect(() => loop?.reset());
  reg.callback('gardefou_event_loop_lag_seconds', 'Event-loop delay, 99th percentile since the previous scrape, in seconds.',
    () => (loop ? lagP99 : null), { merge: 'max' });
  reg.callback('gardefou_event_loop_lag_max_seconds', 'Event-loop delay, maximum since the previous scrape, in seconds.',
    () => (loop ? lagMax : null), { merge: 'max' });
  reg.callback('process_resident_memory_bytes', 'Resident memory size in bytes.', () => mem.rss);
  reg.callback('process_cpu_seconds_total', 'User and system CPU time spent, in seconds.', () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }, { type: 'counter' });
  const startSeconds = Math.round((Date.now() - process.uptime() * 1000) / 1000);
  reg.callback('process_start_time_seconds', 'Start time of the process since the Unix epoch, in seconds.', () => startSeconds, { merge: 'min' });
  reg.callback('nodejs_heap_used_bytes', 'V8 heap used, in bytes.', () => mem.heapUsed);
  reg.callback('nodejs_heap_total_bytes', 'V8 heap allocated, in bytes.', () => mem.heapTotal);
  reg.callback('nodejs_external_memory_bytes', 'Memory of C++ objects bound to JavaScript (buffers...), in bytes.', () => mem.external);

  // Per-decision bytes children, resolved once: the hot path then does a small Map lookup.
  const bytesByDecision = new Map<string, { in: CounterChild; out: CounterChild }>();
  const bytesFor = (decision: string) => {
    let b = bytesByDecision.get(decision);
    if (b === undefined) {
      b = { in: bytes.child('in', decision), out: bytes.child('out', decision) };
      // only remember admitted decisions: unknown ones share the "other" children
      if (bytesByDecision.size < DECISIONS.length + 1) bytesByDecision.set(decision, b);
    }
    return b;
  };
  for (const d of DECISIONS) bytesFor(d);
  const httpDuration = duration.child('http');
  const connectDuration = duration.child('connect');

  return {
    registry: reg,
    request(decision, category, profile, bytesIn, bytesOut) {
      requests.child(decision, category ?? NONE, profile ?? NONE).inc();
      const b = bytesFor(decision);
      b.in.inc(bytesIn);
      b.out.inc(bytesOut);
    },
    bytes(decision, bytesIn, bytesOut) {
      const b = bytesFor(decision);
      b.in.inc(bytesIn);
      b.out.inc(bytesOut);
    },
    requestDuration(protocol, seconds) {
      (protocol === 'connect' ? connectDuration : httpDuration).observe(seconds);
    },
    journalCommit(seconds) {
      commit.observe(seconds);
    },
    journalRecordsLost(n = 1) {
      lost.inc(n);
    },
    update(result, reason) {
      updates.child(result, reason).inc();
    },
    setSources(sources) {
      src = { ...src, ...sources };
    },
    render: () => reg.render(),
    snapshot: () => reg.snapshot(),
    close() {
      loop?.disable();
      loop = null;
    },
  };
}
