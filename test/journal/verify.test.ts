import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { cli, journalCfg, sampleOpen, withJournal, writeRecords } from './helpers';

/** A journal of 60 records in 3 sessions (so 3+ sealed blocks), closed cleanly. */
async function makeJournal(dir: string): Promise<string> {
  const cfg = journalCfg(dir);
  for (let s = 0; s < 3; s++) {
    await withJournal(cfg, (j) => writeRecords(j, 20, (i) => sampleOpen(s * 20 + i)));
  }
  return cfg.path;
}

function copyJournal(src: string, dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(path.dirname(src))) {
    if (f.startsWith('journal.')) fs.copyFileSync(path.join(path.dirname(src), f), path.join(dir, f));
  }
  return path.join(dir, 'journal.db');
}

function tamper(file: string, sql: string): void {
  const db = new Database(file);
  db.exec(sql);
  db.close();
}

t.test('verify: a clean journal is OK (exit 0); each kind of tampering is reported by record id (exit 1)', async (t) => {
  const root = t.testdir();
  const orig = await makeJournal(path.join(root, 'orig'));

  const ok = cli(['verify', '--journal', orig, '--json']);
  t.equal(ok.code, 0, ok.stderr);
  const rep = JSON.parse(ok.stdout) as { ok: boolean; records: number; blocks: number; events: number };
  t.match(rep, { ok: true, records: 60, events: 6 });
  t.ok(rep.blocks >= 3);

  const cases: Array<{ name: string; sql: string; expect: RegExp }> = [
    { name: 'edit a row', sql: `UPDATE records SET client_ip = '10.9.9.9' WHERE id = 17`, expect: /record 17 altered/ },
    { name: 'edit a counter', sql: `UPDATE records SET bytes_out = bytes_out + 1 WHERE id = 44`, expect: /record 44 altered/ },
    { name: 'delete a row', sql: 'DELETE FROM records WHERE id = 23', expect: /record 23 deleted/ },
    {
      name: 'reorder two rows',
      sql: `UPDATE records SET id = -1 WHERE id = 30; UPDATE records SET id = 30 WHERE id = 31; UPDATE records SET id = 31 WHERE id = -1;`,
      expect: /record 30 altered/,
    },
    {
      name: 'insert a forged row',
      sql: `INSERT INTO records SELECT 5000, day, blk, 'FORGED', start_ms, end_ms, '10.6.6.6', client_port, user, workstation, egress_ip,
        egress_port, dest_host, dest_ip, dest_port, protocol, method, decision, reason, profile, category, list_serial, status, bytes_in,
        bytes_out FROM records WHERE id = 5`,
      expect: /record 5000 inserted/,
    },
    {
      name: 'insert a forged row between sealed ones',
      sql: `DELETE FROM records WHERE id = 12; INSERT INTO records SELECT 12, day, NULL, 'FORGED', start_ms, end_ms, '10.6.6.6', client_port, user,
        workstation, egress_ip, egress_port, dest_host, dest_ip, dest_port, protocol, method, decision, reason, profile, category, list_serial,
        status, bytes_in, bytes_out FROM records WHERE id = 13`,
      expect: /record 12 (altered|inserted)/,
    },
    {
      name: 'truncate the tail (rows and their block)',
      sql: `DELETE FROM records WHERE blk = (SELECT max(seq) FROM blocks); DELETE FROM blocks WHERE seq = (SELECT max(seq) FROM blocks);`,
      expect: /journal truncated: the head witness .* names block \d+, the journal ends at block \d+/,
    },
    { name: 'alter a block header', sql: 'UPDATE blocks SET count = count + 1 WHERE seq = 2', expect: /block 2: header altered/ },
    { name: 'delete a block', sql: 'DELETE FROM blocks WHERE seq = 2', expect: /record \d+ inserted|expected block 2/ },
    { name: 'delete an event', sql: 'DELETE FROM events WHERE seq = 2', expect: /event 3: expected event 2/ },
  ];
  for (const c of cases) {
    const file = copyJournal(orig, path.join(root, c.name.replace(/\W+/g, '-')));
    tamper(file, c.sql);
    const r = cli(['verify', '--journal', file]);
    t.equal(r.code, 1, `${c.name}: exit 1`);
    t.match(r.stdout, /journal ALTERED/, `${c.name}: reported`);
    t.match(r.stdout.split('\n').find((l) => l.startsWith('first problem')) ?? '', c.expect, `${c.name}: first problem names it`);
  }

  // a journal file cut in half on disk
  const cut = copyJournal(orig, path.join(root, 'cut'));
  fs.truncateSync(cut, Math.floor(fs.statSync(cut).size / 2));
  const r = cli(['verify', '--journal', cut]);
  t.equal(r.code, 1, 'a truncated file is reported as altered');
  t.match(r.stdout, /ALTERED[\s\S]*(malformed|quick_check|unreadable|corrupt|missing|deleted)/);
});

t.test('verify refuses a wrong public key', async (t) => {
  const root = t.testdir();
  const orig = await makeJournal(path.join(root, 'a'));
  const other = await makeJournal(path.join(root, 'b'));
  const r = cli(['verify', '--journal', orig, '--pub', path.join(path.dirname(other), 'journal.pub')]);
  t.equal(r.code, 1);
  t.match(r.stdout, /bad signature/);
});
