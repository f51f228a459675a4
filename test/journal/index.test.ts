/**
 * The requisition index (NAME.index.db, index-db.ts): built by the writer's indexer thread,
 * queries give the same answer whether the index is caught up, half built, missing or stale,
 * an index of another journal or a damaged file is rebuilt, purged days leave it, and a
 * version-1 journal (indexes inside `records`) is migrated.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import type { Criteria } from '../../src/journal/criteria';
import { attachIndex, IndexWriter } from '../../src/journal/index-db';
import { queryRecords } from '../../src/journal/query';
import { DAY_MS } from '../../src/journal/record';
import { getMeta, journalFiles, openStore, SCHEMA } from '../../src/journal/store';
import { journalCfg, sampleClose, sampleOpen, withJournal, writeRecords } from './helpers';

const SKEW = 2000;

/** ids matching `c`, through the attached index (when given) and by a full scan of `records`. */
function both(file: string, indexFile: string | null, c: Criteria): { indexed: number[]; scanned: number[]; usedIndex: boolean } {
  const db = openStore(file, { readonly: true });
  try {
    const journalId = getMeta(db, 'journal_id')!;
    const scanned = db.transaction(() => queryRecords(db, c, SKEW, null))().map((r) => r.id);
    const ix = indexFile === null ? null : attachIndex(db, indexFile, journalId);
    const indexed = db.transaction(() => queryRecords(db, c, SKEW, ix))().map((r) => r.id);
    return { indexed, scanned, usedIndex: ix !== null };
  } finally {
    db.close();
  }
}

async function waitIndexed(get: () => { indexWatermark: number; indexCaughtUp: boolean }, id: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const s = get();
    if (s.indexCaughtUp && s.indexWatermark >= id) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`index did not reach id ${id}`);
}

t.test('queries through the index built by the writer equal a full scan, open tunnels included', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  const files = journalFiles(cfg.path, null);
  const t0 = Date.now();
  let tunnelPort = 0;
  await withJournal(cfg, async (j) => {
    await writeRecords(j, 300);
    // a long tunnel: connected (egress known) but not finished when indexed
    const h = await j.begin(sampleOpen(1000, { user: 'prof1', destHost: 'long.example' }));
    tunnelPort = 61000;
    h.connected({ destIp: '192.0.2.9', egressIp: '198.51.100.7', egressPort: tunnelPort });
    await writeRecords(j, 20, (i) => sampleOpen(2000 + i));
    await waitIndexed(() => j.stats(), 321);
    const s = j.stats();
    t.equal(s.indexError, null, 'no index error');
    t.equal(s.indexLag, 0, 'stats: nothing left to index (gardefou_journal_index_lag_records)');
    const now = Date.now();
    const cases: Array<[string, Criteria]> = [
      ['client', { fromMs: t0 - 1000, toMs: now, client: '10.1.0.7' }],
      ['user', { fromMs: t0 - 1000, toMs: now, user: 'eleve3' }],
      ['workstation', { fromMs: t0 - 1000, toMs: now, workstation: 'salle1-pc4' }],
      ['host', { fromMs: t0 - 1000, toMs: now, host: 'site2.example' }],
      ['egress port at T', { fromMs: now, toMs: now, egressIp: '198.51.100.7', egressPort: sampleClose(17).egressPort! }],
      ['open tunnel by egress port', { fromMs: now, toMs: now, egressIp: '198.51.100.7', egressPort: tunnelPort }],
      ['open tunnel by user', { fromMs: now, toMs: now, user: 'prof1', active: true }],
    ];
    for (const [name, c] of cases) {
      const r = both(cfg.path, files.index, c);
      t.ok(r.usedIndex, `${name}: the index was attached`);
      t.ok(r.scanned.length > 0, `${name}: the scan finds rows (${r.scanned.length})`);
      t.same(r.indexed, r.scanned, `${name}: index answer = full scan`);
    }
    h.finish(sampleClose(1000, { egressPort: tunnelPort }));
  });
  // after close: the tunnel is final, its egress entry moved from pending into the index
  const ix = new IndexWriter(files.index, cfg.path, getMeta(openStore(cfg.path, { readonly: true }), 'journal_id')!, null);
  try {
    ix.step(1000);
    t.equal((ix.db.prepare('SELECT count(*) AS n FROM pending').get() as { n: number }).n, 0, 'no row left pending');
    t.equal((ix.db.prepare('SELECT count(*) AS n FROM ix_egress WHERE egress_port = ?').get(tunnelPort) as { n: number }).n, 1, 'finished tunnel indexed by egress port');
  } finally {
    ix.close();
  }
});

t.test('a half-built, missing, foreign or damaged index never changes an answer', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  const files = journalFiles(cfg.path, null);
  const t0 = Date.now();
  await withJournal(cfg, (j) => writeRecords(j, 400));
  const db = openStore(cfg.path, { readonly: true });
  const journalId = getMeta(db, 'journal_id')!;
  db.close();
  const c: Criteria = { fromMs: t0 - 1000, toMs: Date.now() + 1000, workstation: 'salle1-pc3' };

  // half built: a fresh index advanced by 150 records only; the rest is read as the tail
  fs.rmSync(files.index, { force: true });
  let ix = new IndexWriter(files.index, cfg.path, journalId, null);
  const step = ix.step(150);
  ix.close();
  t.equal(step.watermark, 150, 'index stopped at id 150');
  t.notOk(step.caughtUp, 'and knows it is behind');
  let r = both(cfg.path, files.index, c);
  t.ok(r.usedIndex);
  t.equal(r.scanned.length, 40, 'the scan finds the 40 rows of salle1-pc3');
  t.same(r.indexed, r.scanned, 'half-built index + tail = full scan');

  // missing: the records alone answer
  fs.rmSync(files.index, { force: true });
  r = both(cfg.path, files.index, c);
  t.notOk(r.usedIndex, 'no index file: none attached');
  t.same(r.indexed, r.scanned);

  // another journal's index: not attached by readers, and started afresh by the writer
  ix = new IndexWriter(files.index, cfg.path, 'someone-else', null);
  ix.step(1000);
  ix.close();
  r = both(cfg.path, files.index, c);
  t.notOk(r.usedIndex, 'an index of another journal is ignored');
  ix = new IndexWriter(files.index, cfg.path, journalId, null);
  t.equal(ix.watermark, 0, 'the writer starts it again from nothing');
  while (!ix.step(100).caughtUp);
  ix.close();
  r = both(cfg.path, files.index, c);
  t.ok(r.usedIndex, 'rebuilt index attached');
  t.same(r.indexed, r.scanned);

  // damaged: garbage bytes are replaced by a rebuilt index
  fs.writeFileSync(files.index, Buffer.alloc(8192, 0x5a));
  r = both(cfg.path, files.index, c);
  t.notOk(r.usedIndex, 'a damaged index is not attached');
  t.same(r.indexed, r.scanned);
  ix = new IndexWriter(files.index, cfg.path, journalId, null);
  while (!ix.step(1000).caughtUp);
  ix.close();
  t.ok(both(cfg.path, files.index, c).usedIndex, 'rebuilt after damage');
  t.equal(fs.statSync(files.index).mode & 0o777, 0o640, 'index file is 0640');
});

t.test('entries of purged days leave the index; a version-1 journal is migrated', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  const files = journalFiles(cfg.path, null);
  const old = Date.now() - 400 * DAY_MS;
  // closing seals the old records in blocks of their own (a block is purged whole)
  await withJournal(cfg, (j) => writeRecords(j, 30, (i) => sampleOpen(i, { startMs: old + i })));
  await withJournal(cfg, async (j) => {
    await writeRecords(j, 30, (i) => sampleOpen(100 + i));
    await waitIndexed(() => j.stats(), 60);
    const p = await j.purgeNow({ retentionDays: 365 });
    t.equal(p.deleted, 30, 'the 30 old records purged');
  });
  const db = openStore(cfg.path, { readonly: true });
  const journalId = getMeta(db, 'journal_id')!;
  db.close();
  const ix = new IndexWriter(files.index, cfg.path, journalId, null);
  const oldDay = Math.floor(old / DAY_MS);
  const count = () => (ix.db.prepare('SELECT count(*) AS n FROM ix_host WHERE day = ?').get(oldDay) as { n: number }).n;
  t.equal(count(), 30, 'old entries still there before the index purge');
  // client, workstation, host and egress entries of 30 records, and 10 users (every third)
  t.equal(ix.purge(), 30 * 4 + 10, 'the index purge removes every entry of the purged day');
  t.equal(count(), 0, 'and they are gone');
  ix.close();

  // version 1: the five indexes lived in records
  const v1 = path.join(dir, 'v1.db');
  const Database = require('better-sqlite3') as typeof import('better-sqlite3');
  const raw = new Database(v1);
  raw.exec(SCHEMA);
  raw.exec('CREATE INDEX rec_client ON records(day, client_ip, start_ms); CREATE INDEX rec_host ON records(day, dest_host, start_ms)');
  raw.pragma('user_version = 1');
  raw.close();
  const ro = openStore(v1, { readonly: true });
  t.equal(ro.pragma('user_version', { simple: true }), 1, 'a version-1 journal still opens read-only (queries before the upgrade)');
  ro.close();
  const w = openStore(v1);
  t.equal(w.pragma('user_version', { simple: true }), 2, 'opening it for writing upgrades it');
  t.same(w.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'rec_%'`).all(), [], 'and drops the old indexes');
  w.close();
});
