import { PerformanceObserver } from 'node:perf_hooks';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import t from 'tap';
import {
  CONTENT_TYPE,
  createGardefouMetrics,
  DECISIONS,
  escapeLabelValue,
  MAX_CATEGORIES,
  MAX_PROFILES,
  mergeSnapshots,
  OTHER,
  Registry,
  renderSnapshot,
} from '../../src/admin/metrics';

/* ---------------------------------------------------------------------------------------- */
/* A small strict parser of the text format 0.0.4: what a Prometheus server would reject,   */
/* this rejects too (unknown family, bad escapes, TYPE after samples, non-cumulative buckets). */

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface ParsedFamily {
  name: string;
  help: string;
  type: string;
  samples: Sample[];
}

function parseValue(s: string): number {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  if (!/^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`bad value ${JSON.stringify(s)}`);
  return Number(s);
}

function parseLabels(s: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < s.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(s.slice(i));
    if (!m) throw new Error(`bad label at ${i} in ${line}`);
    const name = m[1] as string;
    i += m[0].length;
    let v = '';
    for (;;) {
      const c = s[i];
      if (c === undefined) throw new Error(`unterminated label value in ${line}`);
      if (c === '"') break;
      if (c === '\n') throw new Error(`raw newline in ${line}`);
      if (c === '\\') {
        const e = s[i + 1];
        if (e === 'n') v += '\n';
        else if (e === '\\' || e === '"') v += e;
        else throw new Error(`bad escape \\${e} in ${line}`);
        i += 2;
        continue;
      }
      v += c;
      i++;
    }
    i++; // closing quote
    if (name in out) throw new Error(`duplicate label ${name} in ${line}`);
    out[name] = v;
    if (i < s.length) {
      if (s[i] !== ',') throw new Error(`expected "," at ${i} in ${line}`);
      i++;
    }
  }
  return out;
}

function parseExposition(text: string): Map<string, ParsedFamily> {
  if (!text.endsWith('\n')) throw new Error('text must end with a newline');
  const fams = new Map<string, ParsedFamily>();
  let current: ParsedFamily | null = null;
  let pendingHelp: { name: string; help: string } | null = null;
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('# HELP ')) {
      const m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
      if (!m) throw new Error(`bad HELP: ${line}`);
      if (/^(?:[^\\]|\\[n\\])*$/.test(m[2] as string) === false) throw new Error(`bad HELP escape: ${line}`);
      pendingHelp = { name: m[1] as string, help: m[2] as string };
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (!m) throw new Error(`bad TYPE: ${line}`);
      const name = m[1] as string;
      if (fams.has(name)) throw new Error(`family ${name} declared twice`);
      if (!pendingHelp || pendingHelp.name !== name) throw new Error(`TYPE ${name} without its HELP just before`);
      current = { name, help: pendingHelp.help, type: m[2] as string, samples: [] };
      fams.set(name, current);
      pendingHelp = null;
      continue;
    }
    if (line.startsWith('#') || line === '') throw new Error(`unexpected line: ${JSON.stringify(line)}`);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`bad sample: ${line}`);
    if (!current) throw new Error(`sample before any TYPE: ${line}`);
    const name = m[1] as string;
    const allowed = current.type === 'histogram'
      ? [`${current.name}_bucket`, `${current.name}_sum`, `${current.name}_count`]
      : [current.name];
    if (!allowed.includes(name)) throw new Error(`sample ${name} outside its family (${current.name})`);
    current.samples.push({ name, labels: m[2] === undefined ? {} : parseLabels(m[2], line), value: parseValue(m[3] as string) });
  }
  for (const f of fams.values()) if (f.type === 'histogram') checkHistogram(f);
  return fams;
}

/** Buckets cumulative, sorted by le, ending with +Inf equal to _count, per label set. */
function checkHistogram(f: ParsedFamily): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; count?: number; sum?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(rest);
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name.endsWith('_bucket')) {
      if (le === undefined) throw new Error(`${f.name}: bucket without le`);
      g.buckets.push([parseValue(le), s.value]);
    } else if (s.name.endsWith('_count')) g.count = s.value;
    else g.sum = s.value;
  }
  for (const [key, g] of groups) {
    if (g.count === undefined || g.sum === undefined) throw new Error(`${f.name}${key}: _sum or _count missing`);
    for (let i = 1; i < g.buckets.length; i++) {
      const [le0, c0] = g.buckets[i - 1] as [number, number];
      const [le1, c1] = g.buckets[i] as [number, number];
      if (!(le1 > le0)) throw new Error(`${f.name}${key}: le not increasing`);
      if (c1 < c0) throw new Error(`${f.name}${key}: buckets not cumulative`);
    }
    const last = g.buckets[g.buckets.length - 1];
    if (!last || last[0] !== Infinity) throw new Error(`${f.name}${key}: no +Inf bucket`);
    if (last[1] !== g.count) throw new Error(`${f.name}${key}: +Inf bucket ${last[1]} != _count ${g.count}`);
  }
}

function value(fams: Map<string, ParsedFamily>, family: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const f = fams.get(family);
  const s = f?.samples.find((x) => x.name === name && JSON.stringify(x.labels) === JSON.stringify(labels));
  return s?.value;
}

/* ---------------------------------------------------------------------------------------- */

t.test('the strict parser refuses what Prometheus refuses (so the tests below can fail)', async (t) => {
  const bad: Array<[string, string]> = [
    ['no trailing newline', '# HELP a x\n# TYPE a counter\na 1'],
    ['sample of an undeclared family', '# HELP a x\n# TYPE a counter\nb 1\n'],
    ['bad escape', '# HELP a x\n# TYPE a counter\na{l="\\q"} 1\n'],
    ['unescaped quote', '# HELP a x\n# TYPE a counter\na{l="x"y"} 1\n'],
    ['non-cumulative buckets', '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'],
    ['no +Inf bucket', '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n'],
    ['bad HELP escape', '# HELP a x\\q\n# TYPE a counter\n'],
    ['TYPE twice', '# HELP a x\n# TYPE a counter\n# HELP a x\n# TYPE a counter\n'],
  ];
  for (const [why, text] of bad) t.throws(() => parseExposition(text), why);
});

t.test('exact text: labels escaped, HELP escaped, histogram cumulative with +Inf, _sum, _count', async (t) => {
  const r = new Registry();
  const c = r.counter('demo_requests_total', 'Requests by "kind";\na back\\slash.', ['kind', 'path']);
  c.child('a"b', 'x\\y\nz').inc(3);
  c.child('plain', '').inc();
  const g = r.gauge('demo_temperature', 'A gauge.');
  g.set(-1.5);
  const h = r.histogram('demo_seconds', 'A histogram.', [0.1, 1, 10]);
  for (const v of [0.05, 0.1, 0.5, 1, 2, 100]) h.observe(v);
  h.observe(NaN); // ignored
  const lh = r.histogram('demo_size_bytes', 'Labelled histogram.', [10], ['op'], { preset: [['read']] });
  lh.child('write').observe(11);
  r.callback('demo_up', 'Callback gauge.', () => 1);
  r.callback('demo_broken', 'A source that throws is omitted.', () => {
    throw new Error('boom');
  });
  r.callback('demo_absent', 'A source that returns null is omitted.', () => null);
  r.callback('demo_special', 'Special values.', [
    { labels: { v: 'inf' }, fn: () => Infinity },
    { labels: { v: 'nan' }, fn: () => NaN },
  ]);
  const expected = [
    '# HELP demo_requests_total Requests by "kind";\\na back\\\\slash.',
    '# TYPE demo_requests_total counter',
    'demo_requests_total{kind="a\\"b",path="x\\\\y\\nz"} 3',
    'demo_requests_total{kind="plain",path=""} 1',
    '# HELP demo_temperature A gauge.',
    '# TYPE demo_temperature gauge',
    'demo_temperature -1.5',
    '# HELP demo_seconds A histogram.',
    '# TYPE demo_seconds histogram',
    'demo_seconds_bucket{le="0.1"} 2',
    'demo_seconds_bucket{le="1"} 4',
    'demo_seconds_bucket{le="10"} 5',
    'demo_seconds_bucket{le="+Inf"} 6',
    'demo_seconds_sum 103.65',
    'demo_seconds_count 6',
    '# HELP demo_size_bytes Labelled histogram.',
    '# TYPE demo_size_bytes histogram',
    'demo_size_bytes_bucket{op="read",le="10"} 0',
    'demo_size_bytes_bucket{op="read",le="+Inf"} 0',
    'demo_size_bytes_sum{op="read"} 0',
    'demo_size_bytes_count{op="read"} 0',
    'demo_size_bytes_bucket{op="write",le="10"} 0',
    'demo_size_bytes_bucket{op="write",le="+Inf"} 1',
    'demo_size_bytes_sum{op="write"} 11',
    'demo_size_bytes_count{op="write"} 1',
    '# HELP demo_up Callback gauge.',
    '# TYPE demo_up gauge',
    'demo_up 1',
    '# HELP demo_broken A source that throws is omitted.',
    '# TYPE demo_broken gauge',
    '# HELP demo_absent A source that returns null is omitted.',
    '# TYPE demo_absent gauge',
    '# HELP demo_special Special values.',
    '# TYPE demo_special gauge',
    'demo_special{v="inf"} +Inf',
    'demo_special{v="nan"} NaN',
    '',
  ].join('\n');
  const text = r.render();
  t.equal(text, expected);
  const fams = parseExposition(text);
  t.equal(value(fams, 'demo_requests_total', 'demo_requests_total', { kind: 'a"b', path: 'x\\y\nz' }), 3, 'escaping round-trips');
  t.equal(fams.get('demo_requests_total')?.help, 'Requests by "kind";\\na back\\\\slash.', 'HELP kept escaped');
});

t.test('label value escaping table', async (t) => {
  const cases: Array<[string, string]> = [
    ['', ''],
    ['plain', 'plain'],
    ['"', '\\"'],
    ['\\', '\\\\'],
    ['\n', '\\n'],
    ['a\\"b\nc', 'a\\\\\\"b\\nc'],
    ['été', 'été'],
  ];
  for (const [raw, esc] of cases) t.equal(escapeLabelValue(raw), esc, JSON.stringify(raw));
});

t.test('histogram bucket bounds are inclusive (le) and counts cumulative', async (t) => {
  const r = new Registry();
  const h = r.histogram('h_seconds', 'h', [1, 2, 3]);
  const obs: Array<[number, number[]]> = [
    // value -> expected cumulative counts for le=1,2,3,+Inf after this observation
    [1, [1, 1, 1, 1]],
    [1.0000001, [1, 2, 2, 2]],
    [3, [1, 2, 3, 3]],
    [3.5, [1, 2, 3, 4]],
    [-1, [2, 3, 4, 5]],
    [Infinity, [2, 3, 4, 6]],
  ];
  for (const [v, cum] of obs) {
    h.observe(v);
    const f = parseExposition(r.render()).get('h_seconds');
    const got = f?.samples.filter((s) => s.name === 'h_seconds_bucket').map((s) => s.value);
    t.same(got, cum, `after observe(${v})`);
  }
});

t.test('registration errors name the metric', async (t) => {
  const r = new Registry();
  r.counter('x_total', 'x');
  t.throws(() => r.counter('x_total', 'again'), /already registered/);
  t.throws(() => r.counter('bad-name', 'x'), /not valid/);
  t.throws(() => r.counter('y_total', 'x', ['__reserved']), /label name/);
  t.throws(() => r.counter('z_total', 'x', ['a', 'a']), /duplicate/);
  t.throws(() => r.histogram('h1', 'x', [1], ['le']), /reserved/);
  t.throws(() => r.histogram('h2', 'x', [2, 1]), /increase/);
  t.throws(() => r.histogram('h3', 'x', []), /at least one/);
  t.throws(() => r.histogram('h4', 'x', [1, Infinity]), /not finite/);
  t.throws(() => r.counter('p_total', 'x', ['a'], { preset: [['1', '2']] }), /needs 1 values/);
});

t.test('counters never go down; gauges do', async (t) => {
  const r = new Registry();
  const c = r.counter('c_total', 'c');
  c.inc(2);
  c.inc(-5);
  c.inc(NaN);
  t.equal(c.child().get(), 2);
  const g = r.gauge('g', 'g');
  g.child().inc(3);
  g.child().dec(5);
  t.equal(g.child().get(), -2);
});

t.test('cardinality: values past a label cap count as "other", children stay bounded', async (t) => {
  const m = createGardefouMetrics({ eventLoop: false });
  const fam = m.registry.snapshot().find((f) => f.name === 'gardefou_requests_total');
  t.equal(fam?.samples.length, 0, 'no request yet');
  for (let i = 0; i < 1000; i++) m.request('block', `cat${i}`, `prof${i % 100}`, 1, 1);
  m.request('weird-decision-1', null, null, 0, 0);
  const fams = parseExposition(m.render());
  const reqs = fams.get('gardefou_requests_total')?.samples ?? [];
  const cats = new Set(reqs.map((s) => s.labels['category']));
  const profs = new Set(reqs.map((s) => s.labels['profile']));
  t.equal(cats.size, MAX_CATEGORIES + 1, `${MAX_CATEGORIES} categories + "other" (the "none" of the last request was refused: cap reached)`);
  t.ok(cats.has(OTHER));
  t.ok(profs.size <= MAX_PROFILES + 1);
  t.ok(profs.has(OTHER));
  const total = reqs.reduce((a, s) => a + s.value, 0);
  t.equal(total, 1001, 'every request is counted, capped or not');
  t.ok(reqs.length <= (DECISIONS.length + 2) * (MAX_CATEGORIES + 1) * (MAX_PROFILES + 1));
  const other = reqs.filter((s) => s.labels['category'] === OTHER).reduce((a, s) => a + s.value, 0);
  t.equal(other, 1001 - MAX_CATEGORIES, 'requests past the cap land in "other"');
  m.close();
});

t.test('the gardefou metric set renders, parses and carries what the proxy reports', async (t) => {
  let now = 1_700_000_100_000;
  const m = createGardefouMetrics({
    sources: {
      tunnelsOpen: () => 7,
      journalQueueDepth: () => 3,
      journalIndexLag: () => 12,
      journalIndexHealthy: () => false,
      listSerial: () => 2025091501,
      listCreatedMs: () => 1_700_000_000_000,
      nowMs: () => now,
    },
  });
  m.request('allow', null, 'eleves', 100, 5000);
  m.request('allow', null, 'eleves', 50, 50);
  m.request('block', 'adult', 'eleves', 300, 1200);
  m.request('refused', null, null, 80, 0);
  m.requestDuration('http', 0.004);
  m.requestDuration('connect', 42);
  m.journalCommit(0.003);
  m.journalCommit(0.0004);
  m.update('success', 'applied');
  m.update('refused', 'rollback');
  m.update('refused', 'rollback');
  now += 20_000;
  const text = m.render();
  const fams = parseExposition(text);
  const v = (fam: string, labels: Record<string, string> = {}, name = fam) => value(fams, fam, name, labels);
  t.equal(v('gardefou_requests_total', { decision: 'allow', category: 'none', profile: 'eleves' }), 2);
  t.equal(v('gardefou_requests_total', { decision: 'block', category: 'adult', profile: 'eleves' }), 1);
  t.equal(v('gardefou_requests_total', { decision: 'refused', category: 'none', profile: 'none' }), 1);
  t.equal(v('gardefou_bytes_total', { direction: 'in', decision: 'allow' }), 150);
  t.equal(v('gardefou_bytes_total', { direction: 'out', decision: 'allow' }), 5050);
  t.equal(v('gardefou_bytes_total', { direction: 'out', decision: 'error' }), 0, 'preset: present before the first event');
  t.equal(v('gardefou_tunnels_open'), 7);
  t.equal(v('gardefou_journal_queue_depth'), 3);
  t.equal(v('gardefou_journal_index_lag_records'), 12);
  t.equal(v('gardefou_journal_index_healthy'), 0, 'an indexer failure shows as 0');
  t.equal(v('gardefou_journal_commit_seconds', {}, 'gardefou_journal_commit_seconds_count'), 2);
  t.equal(v('gardefou_journal_commit_seconds', { le: '0.0005' }, 'gardefou_journal_commit_seconds_bucket'), 1);
  t.equal(v('gardefou_journal_commit_seconds', { le: '0.005' }, 'gardefou_journal_commit_seconds_bucket'), 2);
  t.equal(v('gardefou_journal_records_lost_total'), 0, 'present and 0 from the start');
  t.equal(v('gardefou_list_serial'), 2025091501);
  t.equal(v('gardefou_list_age_seconds'), 120);
  t.equal(v('gardefou_update_total', { result: 'refused', reason: 'rollback' }), 2);
  t.equal(v('gardefou_request_duration_seconds', { protocol: 'connect', le: '30' }, 'gardefou_request_duration_seconds_bucket'), 0);
  t.equal(v('gardefou_request_duration_seconds', { protocol: 'connect', le: '60' }, 'gardefou_request_duration_seconds_bucket'), 1);
  t.ok((v('process_resident_memory_bytes') ?? 0) > 1e6, 'RSS is reported');
  t.ok((v('nodejs_heap_used_bytes') ?? 0) > 0);
  t.ok(v('gardefou_event_loop_lag_seconds') !== undefined);
  for (const name of fams.keys()) t.match(name, /^(gardefou|process|nodejs)_/, `${name} is namespaced`);
  for (const f of fams.values()) {
    if (f.type === 'counter') t.match(f.name, /_total$/, `counter ${f.name} ends in _total`);
  }
  t.equal(CONTENT_TYPE, 'text/plain; version=0.0.4; charset=utf-8');
  m.close();
});

t.test('sources left out omit their gauges; setSources fills them later', async (t) => {
  const m = createGardefouMetrics({ eventLoop: false });
  let fams = parseExposition(m.render());
  t.same(fams.get('gardefou_tunnels_open')?.samples, []);
  t.same(fams.get('gardefou_list_serial')?.samples, []);
  t.same(fams.get('gardefou_event_loop_lag_seconds')?.samples, [], 'sampler off');
  m.setSources({ tunnelsOpen: () => 2, listSerial: () => null });
  fams = parseExposition(m.render());
  t.equal(value(fams, 'gardefou_tunnels_open', 'gardefou_tunnels_open'), 2);
  t.same(fams.get('gardefou_list_serial')?.samples, [], 'null: lists not from a bundle');
  m.close();
});

t.test('event-loop lag: a blocked loop shows in the next scrape, then the interval resets', async (t) => {
  const m = createGardefouMetrics({ eventLoopResolutionMs: 5 });
  await new Promise((r) => setTimeout(r, 30));
  // Block the loop for 80 ms: the sampler's delay for that turn is at least that long, on any
  // machine (a slower one only makes it longer), so this is a lower bound, not a timing race.
  const until = Date.now() + 80;
  while (Date.now() < until) { /* busy */ }
  await new Promise((r) => setTimeout(r, 30));
  const first = parseExposition(m.render());
  const max = value(first, 'gardefou_event_loop_lag_max_seconds', 'gardefou_event_loop_lag_max_seconds') ?? 0;
  t.ok(max >= 0.05, `max lag ${max}s reflects the 80 ms block`);
  // Rendered again at once, with no loop turn in between: the new interval has no sample yet,
  // so a reset sampler reports 0 (one that was not reset would still carry the block).
  const second = parseExposition(m.render());
  const max2 = value(second, 'gardefou_event_loop_lag_max_seconds', 'gardefou_event_loop_lag_max_seconds');
  t.equal(max2, 0, 'each scrape starts a new interval');
  m.close();
});

t.test('snapshots of several processes merge: counters and histograms add, gauges by their rule', async (t) => {
  const mk = (tunnels: number, serial: number, age: number) => {
    const m = createGardefouMetrics({
      eventLoop: false,
      sources: { tunnelsOpen: () => tunnels, listSerial: () => serial, listCreatedMs: () => 0, nowMs: () => age * 1000 },
    });
    return m;
  };
  const a = mk(2, 10, 100);
  const b = mk(3, 9, 300);
  a.request('allow', 'news', 'default', 10, 20);
  b.request('allow', 'news', 'default', 1, 2);
  b.request('block', 'adult', 'default', 1, 2);
  a.journalCommit(0.002);
  b.journalCommit(0.2);
  const fams = parseExposition(renderSnapshot(mergeSnapshots([a.snapshot(), b.snapshot()])));
  t.equal(value(fams, 'gardefou_requests_total', 'gardefou_requests_total', { decision: 'allow', category: 'news', profile: 'default' }), 2);
  t.equal(value(fams, 'gardefou_requests_total', 'gardefou_requests_total', { decision: 'block', category: 'adult', profile: 'default' }), 1);
  t.equal(value(fams, 'gardefou_bytes_total', 'gardefou_bytes_total', { direction: 'out', decision: 'allow' }), 22);
  t.equal(value(fams, 'gardefou_tunnels_open', 'gardefou_tunnels_open'), 5, 'tunnels: sum');
  t.equal(value(fams, 'gardefou_list_serial', 'gardefou_list_serial'), 9, 'serial: the oldest worker (min)');
  t.equal(value(fams, 'gardefou_list_age_seconds', 'gardefou_list_age_seconds'), 300, 'age: max');
  t.equal(value(fams, 'gardefou_journal_commit_seconds', 'gardefou_journal_commit_seconds_count'), 2);
  t.equal(value(fams, 'gardefou_journal_commit_seconds', 'gardefou_journal_commit_seconds_bucket', { le: '0.0025' }), 1);
  t.equal(value(fams, 'gardefou_journal_commit_seconds', 'gardefou_journal_commit_seconds_bucket', { le: '0.25' }), 2);
  const r1 = new Registry();
  r1.histogram('h', 'h', [1]);
  const r2 = new Registry();
  r2.histogram('h', 'h', [2]);
  t.throws(() => mergeSnapshots([r1.snapshot(), r2.snapshot()]), /differs/);
  a.close();
  b.close();
});

/* ---------------------------------------------------------------------------------------- */
/* Allocation: incrementing existing children must not allocate. Measured as the number of    */
/* garbage collections V8 runs during a synchronous loop: a loop that allocates even ~30      */
/* bytes per iteration fills the young generation many times over in 1e6 iterations; one     */
/* that allocates nothing triggers none. The control loop (a key string per request, the      */
/* naive way) proves the measure can see allocation.                                          */

function gcsDuring(fn: () => void): Promise<number> {
  return new Promise((resolve) => {
    let n = 0;
    const obs = new PerformanceObserver((list) => {
      n += list.getEntries().length;
    });
    obs.observe({ entryTypes: ['gc'] });
    fn();
    // gc entries are delivered asynchronously
    setTimeout(() => {
      obs.disconnect();
      resolve(n);
    }, 100);
  });
}

function forceGc(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

t.test('1e6 increments of existing children: no allocation, no new children, flat heap', async (t) => {
  const m = createGardefouMetrics({ eventLoop: false });
  const cats = Array.from({ length: 80 }, (_, i) => `category${i}`);
  const profiles = ['eleves', 'enseignants', 'admin', 'invites'];
  const decisions = ['allow', 'block', 'refused', 'error'];
  const N = 1_000_000;
  const run = (n: number) => {
    for (let i = 0; i < n; i++) {
      m.request(decisions[i & 3] as string, i % 7 === 0 ? null : (cats[i % 80] as string), profiles[i & 3] as string, 120, 1400);
      m.journalCommit(0.001 + (i & 7) * 0.001);
      m.requestDuration((i & 1) === 0 ? 'http' : 'connect', 0.01);
    }
  };
  run(50_000); // warm up: creates every child, lets the JIT optimise the loop
  const families = m.registry.snapshot();
  const before = families.map((f) => f.samples.length);
  const gc = forceGc();
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const gcs = await gcsDuring(() => run(N));
  gc();
  const heapAfter = process.memoryUsage().heapUsed;
  const after = m.registry.snapshot().map((f) => f.samples.length);
  t.same(after, before, 'no child created by increments of existing ones');
  t.ok(gcs <= 2, `garbage collections during 1e6 increments: ${gcs} (expected none)`);
  t.ok(heapAfter - heapBefore < 1 << 20, `retained heap growth ${heapAfter - heapBefore} bytes < 1 MiB`);
  const fams = parseExposition(m.render());
  const total = (fams.get('gardefou_requests_total')?.samples ?? []).reduce((a, s) => a + s.value, 0);
  t.equal(total, N + 50_000, 'every increment counted');

  // Control: the naive way (a key string per request) is seen by the same measure.
  const naive = new Map<string, number>();
  const control = await gcsDuring(() => {
    for (let i = 0; i < N; i++) {
      const key = `${decisions[i & 3] as string}|${cats[i % 80] as string}|${profiles[i & 3] as string}|${i & 1}`;
      naive.set(key, (naive.get(key) ?? 0) + 1);
    }
  });
  t.ok(control >= 3, `the measure sees per-request strings: ${control} collections`);
  m.close();
});
