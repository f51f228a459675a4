import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { openJournal, JournalDownError } from '../../src/journal';
import { silentLogger } from '../../src/log';
import { journalCfg, sampleClose, sampleOpen, withJournal, writeRecords } from './helpers';

t.test('begin/connected/finish store every LEGAL.md field, and nothing else', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  await withJournal(cfg, async (j) => {
    t.equal(j.healthy, true);
    const h = await j.begin(sampleOpen(3, { startMs: 1_741_946_525_123, user: 'eleve3', workstation: 'cdi-pc2' }));
    h.connected({ destIp: '192.0.2.10', egressIp: '198.51.100.7', egressPort: 41234 });
    h.finish({ endMs: 1_741_946_527_456, destIp: '192.0.2.10', egressIp: '198.51.100.7', egressPort: 41234, status: 204, bytesIn: 10, bytesOut: 20, decision: 'error', reason: 'upstream-reset' });
    h.finish({ endMs: 1, destIp: null, egressIp: null, egressPort: null, status: 500, bytesIn: 0, bytesOut: 0 }); // second finish ignored
    const live = new Database(cfg.path, { readonly: true });
    t.equal(live.pragma('journal_mode', { simple: true }), 'wal', 'WAL while serving');
    live.close();
    const refused = await j.begin(sampleOpen(5, { decision: 'refused', reason: 'port' }));
    refused.finish({ endMs: Date.now(), destIp: null, egressIp: null, egressPort: null, status: 403, bytesIn: 0, bytesOut: 0 });
  });
  const db = new Database(cfg.path, { readonly: true });
  t.teardown(() => db.close());
  const cols = (db.prepare('PRAGMA table_info(records)').all() as Array<{ name: string }>).map((c) => c.name);
  t.same(cols.filter((c) => /path|query|url|header|body|cookie/i.test(c)), [], 'no column can hold a path, query, header or body');
  const r = db.prepare('SELECT * FROM records WHERE id = 1').get() as Record<string, unknown>;
  t.match(r, {
    ref: sampleOpen(3).ref, start_ms: 1_741_946_525_123, end_ms: 1_741_946_527_456, client_ip: '10.1.0.3', client_port: 30003,
    user: 'eleve3', workstation: 'cdi-pc2', egress_ip: '198.51.100.7', egress_port: 41234, dest_host: 'site3.example',
    dest_ip: '192.0.2.10', dest_port: 443, protocol: 'connect', method: 'CONNECT', decision: 'error', reason: 'upstream-reset',
    profile: 'college', category: null, list_serial: '2025031401', status: 204, bytes_in: 10, bytes_out: 20,
    day: Math.floor(1_741_946_525_123 / 86_400_000), blk: 1,
  });
  t.match(db.prepare('SELECT * FROM records WHERE id = 2').get(), { decision: 'refused', reason: 'port', status: 403, egress_port: null });
  t.equal((db.prepare('SELECT count(*) AS n FROM blocks').get() as { n: number }).n, 1, 'close sealed one block');
  t.same((db.prepare('SELECT kind FROM events ORDER BY seq').all() as Array<{ kind: string }>).map((e) => e.kind), ['start', 'stop']);
  t.equal(db.pragma('journal_mode', { simple: true }), 'delete', 'rollback journal once stopped, so operators can read it without creating -shm');
  t.equal(db.pragma('user_version', { simple: true }), 2, 'schema version recorded');
  t.equal(fs.statSync(cfg.path).mode & 0o777, 0o640, 'journal file 0640');
  t.equal(fs.statSync(path.join(dir, 'journal.key')).mode & 0o777, 0o600, 'private key 0600');
  t.ok(fs.existsSync(path.join(dir, 'journal.pub')));
});

t.test('ids keep growing across restarts and the same key is reused', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  await withJournal(cfg, (j) => writeRecords(j, 5));
  const key1 = fs.readFileSync(path.join(dir, 'journal.key'), 'utf8');
  await withJournal(cfg, async (j) => {
    const h = await j.begin(sampleOpen(99));
    h.finish(sampleClose(99));
    t.equal((h as unknown as { id: number }).id, 6);
  });
  t.equal(fs.readFileSync(path.join(dir, 'journal.key'), 'utf8'), key1);
});

t.test('a replaced key is refused at open (it would not match sealed blocks)', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  await withJournal(cfg, (j) => writeRecords(j, 1));
  fs.rmSync(path.join(dir, 'journal.key'));
  await t.rejects(openJournal(cfg, silentLogger()), { code: 'GARDEFOU_JOURNAL', message: /journal\.key is missing but .*journal\.pub exists/ });
});

t.test('fail-closed when the journal file is removed, and recovery when it is back', async (t) => {
  const root = t.testdir();
  const dir = path.join(root, 'var');
  const cfg = journalCfg(dir);
  const j = await openJournal(cfg, silentLogger(), { retryMs: 50 });
  t.teardown(() => j.close());
  const healthEvents: boolean[] = [];
  j.on('health', (h: boolean) => healthEvents.push(h));
  const h1 = await j.begin(sampleOpen(1));
  fs.renameSync(dir, path.join(root, 'moved')); // the open descriptor would still accept writes
  h1.finish(sampleClose(1));
  await t.rejects(j.begin(sampleOpen(2)), JournalDownError);
  t.equal(j.healthy, false);
  t.match(j.stats(), { healthy: false, lastError: /is gone/, commitFailures: 1 });
  await t.rejects(j.begin(sampleOpen(3)), { code: 'GARDEFOU_JOURNAL_DOWN' }, 'refused at once while unhealthy');
  fs.renameSync(path.join(root, 'moved'), dir);
  for (let i = 0; i < 200 && !j.healthy; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(j.healthy, true, 'recovered by itself');
  const h4 = await j.begin(sampleOpen(4));
  h4.finish(sampleClose(4));
  await j.close();
  t.same(healthEvents, [false, true]);
  const db = new Database(cfg.path, { readonly: true });
  t.teardown(() => db.close());
  const rows = db.prepare('SELECT id, end_ms IS NOT NULL AS fin FROM records ORDER BY id').all();
  t.same(rows, [{ id: 1, fin: 1 }, { id: 3, fin: 1 }], 'the finish queued while down was written after recovery; the refused begin left nothing');
});

/** A real full disk needs a small filesystem: a tmpfs, which only root with CAP_SYS_ADMIN may mount. */
function mountSmallTmpfs(): string | null {
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'gardefou-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' });
    return mnt;
  } catch {
    fs.rmdirSync(mnt);
    return null;
  }
}
const fullDisk = mountSmallTmpfs();

t.test('fail-closed on a full disk (a real 1 MiB tmpfs)', { skip: fullDisk ? false : 'cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the removal test covers fail-closed' }, async (t) => {
  const mnt = fullDisk!;
  t.teardown(() => {
    execFileSync('umount', ['-l', mnt]);
    fs.rmdirSync(mnt);
  });
  const cfg = journalCfg(mnt);
  const j = await openJournal(cfg, silentLogger(), { retryMs: 50 });
  t.teardown(() => j.close());
  let refused: unknown = null;
  for (let round = 0; round < 200 && refused === null; round++) {
    try {
      await writeRecords(j, 200, (i) => sampleOpen(i, { destHost: `${'x'.repeat(200)}${round}-${i}.example` }));
    } catch (err) {
      refused = err;
    }
  }
  t.type(refused, JournalDownError, 'begin() rejected once the disk was full');
  t.equal(j.healthy, false);
  t.match(j.stats().lastError, /full|disk|space/i);
  await t.rejects(j.begin(sampleOpen(1)), JournalDownError);
});
