/**
 * Journal benchmarks (results and exact commands in bench/README.md, section "Journal").
 *   node dist/bench/journal-bench.js append   [--records N] [--inflight K]   sustained append rate
 *   node dist/bench/journal-bench.js kill     [--acks N]                     records lost after kill -9
 *   node dist/bench/journal-bench.js big      [--records N] [--days D]       synthetic journal: bytes/record, 4 queries
 *   node dist/bench/journal-bench.js purge    [--dir DIR]                    purge one day while appending: append stall
 * Each writes into --dir (default a temp dir) and prints one JSON line per measure.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { defaultConfig, type JournalConfig } from '../src/config';
import { openJournal, type Journal } from '../src/journal';
import { buildBlock, insertBlock, lastBlock, type SealEntry } from '../src/journal/chain';
import { loadOrCreateKey } from '../src/journal/keys';
import { attachIndex, IndexWriter } from '../src/journal/index-db';
import { queryRecords } from '../src/journal/query';
import { DAY_MS, dayOf, leafOf, type RecordRow } from '../src/journal/record';
import { getMeta, journalFiles, openStore, setMeta } from '../src/journal/store';
import type { JournalOpen } from '../src/journal/types';
import { silentLogger } from '../src/log';

const args = process.argv.slice(2);
const flag = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : def;
};
const dir = args.includes('--dir') ? flag('dir', '') : fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-jbench-'));
fs.mkdirSync(dir, { recursive: true });
const report = (name: string, o: object) => console.log(JSON.stringify({ bench: name, ...o }));

function cfgFor(file: string, over: Partial<JournalConfig> = {}): JournalConfig {
  return { ...defaultConfig().journal, path: file, batchMs: 5, ...over };
}

function openOf(i: number, startMs = Date.now()): JournalOpen {
  return {
    ref: `B${i.toString(36)}`, startMs, clientIp: `10.3.${(i >> 8) & 255}.${i & 255}`, clientPort: 1024 + (i % 60000), user: i % 2 ? `u${i % 1500}` : null,
    workstation: `pc${i % 800}`, protocol: i % 3 ? 'connect' : 'http', method: i % 3 ? 'CONNECT' : 'GET', destHost: `h${i % 50000}.example.org`,
    destPort: i % 3 ? 443 : 80, decision: 'allow', reason: 'not-listed', profile: 'college', category: null, listSerial: '2025031401',
  };
}

/** Sustained rate: `inflight` concurrent clients each doing begin -> connected -> finish in a loop. */
async function benchAppend(): Promise<void> {
  const total = Number(flag('records', '300000'));
  const inflight = Number(flag('inflight', '2000'));
  const j = await openJournal(cfgFor(path.join(dir, 'append.db')), silentLogger());
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  let n = 0;
  let done = 0;
  const lat: number[] = [];
  const t0 = performance.now();
  const worker = async () => {
    while (n < total) {
      const i = n++;
      const b0 = performance.now();
      const h = await j.begin(openOf(i));
      if ((i & 63) === 0) lat.push(performance.now() - b0);
      h.connected({ destIp: '192.0.2.1', egressIp: '198.51.100.7', egressPort: 1024 + (i % 60000) });
      h.finish({ endMs: Date.now(), destIp: '192.0.2.1', egressIp: '198.51.100.7', egressPort: 1024 + (i % 60000), status: 200, bytesIn: 500, bytesOut: 20000 });
      done++;
    }
  };
  await Promise.all(Array.from({ length: inflight }, worker));
  const t1 = performance.now();
  const s = j.stats();
  await j.close();
  const t2 = performance.now();
  loop.disable();
  lat.sort((a, b) => a - b);
  report('append', {
    records: done, inflight, seconds: +((t1 - t0) / 1000).toFixed(2), recordsPerSecond: Math.round(done / ((t1 - t0) / 1000)),
    closeFlushMs: Math.round(t2 - t1), commits: s.commits, maxCommitMsInWorker: +s.maxCommitMs.toFixed(1),
    beginLatencyMs: { p50: +(lat[Math.floor(lat.length / 2)] ?? 0).toFixed(1), p99: +(lat[Math.floor(lat.length * 0.99)] ?? 0).toFixed(1), max: +(lat[lat.length - 1] ?? 0).toFixed(1) },
    eventLoopDelayMs: { p99: +(loop.percentile(99) / 1e6).toFixed(1), max: +(loop.max / 1e6).toFixed(1) },
    bytesPerRecord: Math.round(fs.statSync(path.join(dir, 'append.db')).size / done),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  });
}

/** kill -9 of a process appending under load; counts acknowledged records missing afterwards. */
async function benchKill(): Promise<void> {
  const acks = Number(flag('acks', '100000'));
  const file = path.join(dir, 'kill.db');
  const loader = path.join(__dirname, '..', 'test', 'journal', 'fixtures', 'load-writer.js');
  const refs: string[] = [];
  await new Promise<void>((resolve) => {
    const child = spawn(process.execPath, [loader, file, '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += String(d);
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('K')) refs.push(l);
      if (refs.length >= acks) child.kill('SIGKILL');
    });
    child.on('exit', () => resolve());
  });
  const db = openStore(file, { readonly: true });
  const have = new Set((db.prepare('SELECT ref FROM records').all() as Array<{ ref: string }>).map((r) => r.ref));
  db.close();
  const lost = refs.filter((r) => !have.has(r)).length;
  const j = await openJournal(cfgFor(file), silentLogger());
  const recovered = j.recovered;
  await j.close();
  report('kill', { acknowledged: refs.length, inJournal: have.size, lost, sealedAtNextStart: recovered });
}

/**
 * A synthetic journal written straight into SQLite (same schema, same leaves and signed blocks
 * as the writer; generating through the writer would take 25x longer), `days` days ending
 * yesterday, school hours 08:00-18:00 UTC, then the four usual requisitions.
 */
async function benchBig(): Promise<void> {
  const total = Number(flag('records', '10000000'));
  const days = Number(flag('days', '30'));
  const file = path.join(dir, 'big.db');
  const files = journalFiles(file, null);
  const { signer } = loadOrCreateKey(files.key, files.pub);
  const db = openStore(file);
  db.pragma('synchronous = OFF'); // generation only
  if (getMeta(db, 'journal_id') === null) setMeta(db, 'journal_id', 'bench');
  const have = (db.prepare('SELECT count(*) AS n FROM records').get() as { n: number }).n;
  const firstDay = dayOf(Date.now()) - days;
  const perDay = Math.ceil(total / days);
  const ins = db.prepare(`INSERT INTO records (id, day, blk, ref, start_ms, end_ms, client_ip, client_port, user, workstation, egress_ip,
    egress_port, dest_host, dest_ip, dest_port, protocol, method, decision, reason, profile, category, list_serial, status, bytes_in,
    bytes_out) VALUES (@id, @day, @blk, @ref, @start_ms, @end_ms, @client_ip, @client_port, @user, @workstation, @egress_ip, @egress_port,
    @dest_host, @dest_ip, @dest_port, @protocol, @method, @decision, @reason, @profile, @category, @list_serial, @status, @bytes_in, @bytes_out)`);
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const t0 = performance.now();
  let prev = lastBlock(db);
  let blk: SealEntry[] = [];
  const seal = () => {
    const b = buildBlock('bench', prev, blk, blk[blk.length - 1]!.id + 1, Date.now(), signer);
    insertBlock(db, b);
    prev = b;
    blk = [];
  };
  if (have === 0) {
    const chunk = 100_000;
    for (let id = 1; id <= total; id += chunk) {
      db.transaction(() => {
        for (let k = id; k < Math.min(id + chunk, total + 1); k++) {
          const d = firstDay + Math.floor((k - 1) / perDay);
          const start = d * DAY_MS + 8 * 3_600_000 + Math.floor((((k - 1) % perDay) / perDay) * 10 * 3_600_000);
          const c = rnd(2000);
          const row: RecordRow & { blk: number; day: number } = {
            id: k, day: d, blk: (prev?.seq ?? 0) + 1, ref: `S${k.toString(36)}`, start_ms: start, end_ms: start + 200 + rnd(60_000),
            client_ip: `10.${c >> 8}.${c & 255}.${rnd(4) + 1}`, client_port: 1024 + rnd(64000), user: rnd(2) ? `eleve${rnd(1500)}` : null,
            workstation: `salle${rnd(40)}-pc${rnd(20)}`, egress_ip: '198.51.100.7', egress_port: 1024 + rnd(64000),
            dest_host: `h${Math.floor(Math.sqrt(rnd(2_500_000_000)))}.example.org`, dest_ip: `192.0.${rnd(256)}.${rnd(256)}`, dest_port: rnd(3) ? 443 : 80,
            protocol: rnd(3) ? 'connect' : 'http', method: rnd(3) ? 'CONNECT' : 'GET', decision: rnd(20) ? 'allow' : 'block',
            reason: 'not-listed', profile: 'college', category: null, list_serial: '2025031401', status: 200, bytes_in: rnd(5000), bytes_out: rnd(500000),
          };
          ins.run(row);
          blk.push({ id: k, leaf: leafOf(row), start: start });
          if (blk.length === 4096) seal();
        }
        if (blk.length > 0 && id + chunk > total) seal();
      })();
    }
    setMeta(db, 'max_duration_ms', String(60_200));
  }
  const genS = (performance.now() - t0) / 1000;
  db.pragma('wal_checkpoint(TRUNCATE)');
  const n = (db.prepare('SELECT count(*) AS n FROM records').get() as { n: number }).n;
  const size = fs.statSync(file).size;
  db.close();
  // the requisition index, built as the indexer thread does (steps of 20,000 records)
  const x0 = performance.now();
  const ixw = new IndexWriter(files.index, file, 'bench', null);
  let steps = 0;
  while (!ixw.step(20_000).caughtUp) steps++;
  ixw.close();
  const ixS = (performance.now() - x0) / 1000;
  const ixSize = fs.statSync(files.index).size;
  report('big', {
    records: n, days, perDay, generateSeconds: +genS.toFixed(1), fileBytes: size, bytesPerRecord: Math.round(size / n),
    indexSteps: steps, indexSeconds: +ixS.toFixed(1), indexBytes: ixSize, indexBytesPerRecord: Math.round(ixSize / n),
    totalBytesPerRecord: Math.round((size + ixSize) / n),
  });

  // the four usual requisitions, on a fresh read-only connection (as the CLI does), 5 runs each
  const ro = openStore(file, { readonly: true });
  const attached = attachIndex(ro, files.index, 'bench');
  if (attached === null) throw new Error(`index ${files.index} not attached`);
  const mid = firstDay + Math.floor(days / 2);
  const sample = ro.prepare('SELECT * FROM records WHERE id = ?').get(perDay * Math.floor(days / 2) + 1234) as RecordRow;
  const user = (ro.prepare('SELECT user FROM records WHERE id > ? AND user IS NOT NULL LIMIT 1').get(sample.id) as { user: string }).user;
  const queries: Array<[string, Parameters<typeof queryRecords>[1]]> = [
    ['egress ip+port at T (+/-2 s)', { fromMs: sample.start_ms + 100, toMs: sample.start_ms + 100, egressIp: '198.51.100.7', egressPort: sample.egress_port! }],
    ['client over a day', { fromMs: mid * DAY_MS, toMs: (mid + 1) * DAY_MS - 1, client: sample.client_ip }],
    ['user over a month', { fromMs: (firstDay) * DAY_MS, toMs: (firstDay + 30) * DAY_MS, user }],
    ['host over a week', { fromMs: (mid - 7) * DAY_MS, toMs: mid * DAY_MS, host: sample.dest_host }],
  ];
  for (const [name, c] of queries) {
    const times: number[] = [];
    let rows = 0;
    for (let r = 0; r < 5; r++) {
      const q0 = performance.now();
      rows = ro.transaction(() => queryRecords(ro, c, 2000, attached))().length;
      times.push(performance.now() - q0);
    }
    report('query', { name, rows, firstMs: +times[0]!.toFixed(1), medianMs: +times.slice().sort((a, b) => a - b)[2]!.toFixed(1) });
  }
  ro.close();
}

/** Purges the oldest day of the big journal from the writer thread while appending. */
async function benchPurge(): Promise<void> {
  const file = path.join(dir, 'big.db');
  const ro = openStore(file, { readonly: true });
  // the first day still holding a full day of records (an earlier run purged the one before)
  const first = ro.prepare('SELECT day AS d FROM records GROUP BY day HAVING count(*) > 100000 ORDER BY day LIMIT 1').get() as { d: number };
  const oneDay = (ro.prepare('SELECT count(*) AS n FROM records WHERE day = ?').get(first.d) as { n: number }).n;
  ro.close();
  const j = await openJournal(cfgFor(file, { retentionDays: 365 }), silentLogger());
  const chunkRows = Number(flag('chunk', '500'));
  const measure = async (ms: number, during?: () => Promise<unknown>) => {
    // a busy school: 2000 records/s, each begin timed
    const lat: number[] = [];
    let stop = false;
    let i = 0;
    const pace = async () => {
      while (!stop) {
        const b0 = performance.now();
        const h = await j.begin(openOf(i++));
        lat.push(performance.now() - b0);
        h.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: 200, bytesIn: 1, bytesOut: 1 });
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    const runners = Array.from({ length: 20 }, pace);
    const extra = during ? await during() : await new Promise((r) => setTimeout(r, ms));
    stop = true;
    await Promise.all(runners);
    lat.sort((a, b) => a - b);
    return { extra, begins: lat.length, p50: +(lat[Math.floor(lat.length / 2)] ?? 0).toFixed(1), p99: +(lat[Math.floor(lat.length * 0.99)] ?? 0).toFixed(1), max: +(lat[lat.length - 1] ?? 0).toFixed(1) };
  };
  const base = await measure(5000);
  const nowMs = (first.d + 1) * DAY_MS + 365 * DAY_MS + 1; // the first day is now past retention
  const during = await measure(0, () => j.purgeNow({ nowMs, chunkRows, retentionDays: 365 }));
  await j.close();
  const pr = during.extra as { deleted: number; chunks: number; maxChunkMs: number; totalMs: number };
  report('purge', {
    dayRecords: oneDay, deleted: pr.deleted, chunkRows, chunks: pr.chunks, purgeSeconds: +(pr.totalMs / 1000).toFixed(1),
    maxChunkMs: +pr.maxChunkMs.toFixed(1), beginLatencyBaselineMs: { p50: base.p50, p99: base.p99, max: base.max },
    beginLatencyDuringPurgeMs: { begins: during.begins, p50: during.p50, p99: during.p99, max: during.max },
    maxAppendStallMs: +Math.max(0, during.max - base.p50).toFixed(1),
  });
}

async function main(): Promise<void> {
  const what = args[0] ?? 'append';
  const all: Record<string, () => Promise<void>> = { append: benchAppend, kill: benchKill, big: benchBig, purge: benchPurge };
  const fn = all[what];
  if (!fn) throw new Error(`unknown bench ${what}; one of ${Object.keys(all).join(', ')}`);
  report('env', { dir, cpus: os.cpus().length, node: process.version });
  await fn();
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

export type { Journal };
