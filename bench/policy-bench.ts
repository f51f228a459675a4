/**
 * Policy engine benchmark: compile, index size, load time, memory after load, lookups per
 * second, bytes allocated per lookup. One function per operation; each measured phase that
 * must not see the others' garbage runs in its own process.
 *
 *   node --expose-gc dist/bench/policy-bench.js all --src DIR [--probes DIR] [--work DIR]
 *   node --expose-gc dist/bench/policy-bench.js compile --src DIR --out FILE
 *   node --expose-gc --max-semi-space-size=64 dist/bench/policy-bench.js load --index FILE [--probes DIR] [--src-real DIR]
 *
 * `--src` is a UT1 tree (real UT1 plus synthetic categories, see bench/README.md);
 * `--probes` is the folder where ../shared/bench/gen-lists.mjs wrote probe-blocked.txt and
 * probe-allowed.txt. Results are printed as JSON lines (one per measure) and a summary.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { compileLists } from '../src/lists/compile';
import { Engine } from '../src/policy/engine';
import { ListIndex } from '../src/policy/list-index';
import { parseConnectAuthority } from '../src/policy/normalise';
import { parsePolicy } from '../src/policy/policy-file';
import type { Target } from '../src/policy/types';

type Args = Record<string, string>;

function args(argv: string[]): { cmd: string; a: Args } {
  const a: Args = {};
  for (let i = 1; i < argv.length; i += 2) a[argv[i]!.replace(/^--/, '')] = argv[i + 1] ?? '';
  return { cmd: argv[0] ?? 'all', a };
}

function out(name: string, value: unknown): void {
  process.stdout.write(JSON.stringify({ measure: name, ...(typeof value === 'object' ? value : { value }) }) + '\n');
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (!g) throw new Error('run with node --expose-gc');
  g();
  g();
}

const MiB = 1024 * 1024;

async function benchCompile(src: string, outFile: string): Promise<void> {
  const t0 = performance.now();
  const r = await compileLists(src, outFile);
  const ms = performance.now() - t0;
  out('compile', { ms: Math.round(ms), domains: r.domains, urls: r.urls, expressions: r.expressions, bytes: r.bytes, malformed: r.malformed.count, peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) });
}

function benchLoad(indexFile: string): ListIndex {
  gc();
  const before = process.memoryUsage();
  const t0 = performance.now();
  const idx = new ListIndex(fs.readFileSync(indexFile), indexFile);
  const ms = performance.now() - t0;
  gc();
  const after = process.memoryUsage();
  const domains = idx.header.domains.count;
  out('load', {
    ms: Math.round(ms * 10) / 10,
    domains,
    fileBytes: idx.bytes,
    bytesPerDomainFile: Math.round((idx.bytes / domains) * 10) / 10,
    rssDeltaMiB: Math.round(((after.rss - before.rss) / MiB) * 10) / 10,
    heapUsedDeltaMiB: Math.round(((after.heapUsed - before.heapUsed) / MiB) * 10) / 10,
    arrayBuffersDeltaMiB: Math.round(((after.arrayBuffers - before.arrayBuffers) / MiB) * 10) / 10,
    bytesPerDomainRss: Math.round(((after.rss - before.rss) / domains) * 10) / 10,
    rssMiB: Math.round((after.rss / MiB) * 10) / 10,
    heapUsedMiB: Math.round((after.heapUsed / MiB) * 10) / 10,
  });
  return idx;
}

function readLines(file: string, max: number): string[] {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '').slice(0, max);
}

/**
 * The mix: listed hosts and subdomains of listed hosts (blocked), near misses and fresh names
 * (allowed) from gen-lists probes, real UT1 hosts with "www.", and ordinary misses shaped like
 * what browsers ask for (CDN and API subdomains).
 */
function mix(probes: string | undefined, real: string | undefined): string[] {
  const hosts: string[] = [];
  if (probes) {
    hosts.push(...readLines(path.join(probes, 'probe-blocked.txt'), 10000));
    hosts.push(...readLines(path.join(probes, 'probe-allowed.txt'), 10000));
  }
  if (real) {
    for (const c of ['gambling', 'social_networks', 'press', 'games', 'shopping']) {
      hosts.push(...readLines(path.join(real, c, 'domains'), 2000).map((h) => `www.${h.replace(/^\.+/, '')}`));
    }
  }
  for (let i = 0; i < 10000; i++) hosts.push(`static-${i % 97}.cdn${i % 13}.example-${i}.org`, `api.service${i}.fr`);
  // deterministic shuffle
  let s = 12345;
  for (let i = hosts.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const j = s % (i + 1);
    [hosts[i], hosts[j]] = [hosts[j]!, hosts[i]!];
  }
  return hosts;
}

function benchLookups(idx: ListIndex, hosts: string[]): void {
  let sink = 0;
  for (let i = 0; i < 300000; i++) sink += idx.collect(hosts[i % hosts.length]!);
  const N = 3_000_000;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) sink += idx.collect(hosts[i % hosts.length]!);
  const ms = performance.now() - t0;
  let withHits = 0;
  for (const h of hosts) if (idx.collect(h) > 0) withHits++;
  out('lookup', { lookups: N, ms: Math.round(ms), perSecond: Math.round(N / (ms / 1000)), hosts: hosts.length, shareWithHits: Math.round((withHits / hosts.length) * 1000) / 1000, sink });
}

function benchDecide(idx: ListIndex, hosts: string[]): void {
  const spec = parsePolicy({ profiles: { default: { blockBlackUsage: true } } }, '(bench)');
  const engine = new Engine(idx, spec, '(bench)', null);
  const targets: Target[] = hosts.map((h) => parseConnectAuthority(`${h}:443`)).filter((x): x is Target => x !== null);
  const client = { ip: '10.0.0.1' };
  let blocked = 0;
  for (let i = 0; i < 200000; i++) if (engine.decide(targets[i % targets.length]!, client).action === 'block') blocked++;
  const N = 1_000_000;
  const t0 = performance.now();
  blocked = 0;
  for (let i = 0; i < N; i++) if (engine.decide(targets[i % targets.length]!, client).action === 'block') blocked++;
  const ms = performance.now() - t0;
  out('decide-connect', { decisions: N, ms: Math.round(ms), perSecond: Math.round(N / (ms / 1000)), blockedShare: Math.round((blocked / N) * 1000) / 1000, expressionsTested: engine.describe().expressions });
}

/** Bytes allocated per lookup on the miss path: heap growth over a loop (semi-space 64 MiB). */
function benchAllocation(idx: ListIndex): void {
  const misses: string[] = [];
  for (let i = 0; i < 1000; i++) misses.push(`static-${i}.cdn.example-${i}.org`);
  let sink = 0;
  for (let i = 0; i < 200000; i++) sink += idx.collect(misses[i % 1000]!);
  const N = 1_000_000;
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < N; i++) sink += idx.collect(misses[i % 1000]!);
  const after = process.memoryUsage().heapUsed;
  out('alloc-miss', { lookups: N, bytesPerLookup: Math.max(0, Math.round(((after - before) / N) * 100) / 100), heapDelta: after - before, sink });
}

async function main(): Promise<void> {
  const { cmd, a } = args(process.argv.slice(2));
  if (cmd === 'compile') return benchCompile(a['src']!, a['out']!);
  if (cmd === 'load') {
    const idx = benchLoad(a['index']!);
    const hosts = mix(a['probes'], a['src-real']);
    benchAllocation(idx);
    benchLookups(idx, hosts);
    benchDecide(idx, hosts);
    return;
  }
  if (cmd === 'all') {
    const work = a['work'] ?? fs.mkdtempSync('/tmp/gardefou-policy-bench-');
    const index = path.join(work, 'bench.idx');
    const run = (extra: string[], cmdArgs: string[]) => {
      const r = spawnSync(process.execPath, ['--expose-gc', ...extra, __filename, ...cmdArgs], { stdio: 'inherit' });
      if (r.status !== 0) throw new Error(`bench step ${cmdArgs[0]} failed`);
    };
    run([], ['compile', '--src', a['src']!, '--out', index]);
    const loadArgs = ['load', '--index', index];
    if (a['probes']) loadArgs.push('--probes', a['probes']);
    if (a['src-real']) loadArgs.push('--src-real', a['src-real']);
    run(['--max-semi-space-size=64'], loadArgs);
    return;
  }
  throw new Error(`unknown command ${cmd} (all | compile | load)`);
}

main().catch((err: unknown) => {
  process.stderr.write(`policy-bench: ${(err as Error).message}\n`);
  process.exit(1);
});
