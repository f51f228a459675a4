import { spawn } from 'node:child_process';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { cli, journalCfg, withJournal } from './helpers';

const LOADER = path.join(__dirname, 'fixtures', 'load-writer.js');

/** Runs the load writer until it has acknowledged `acks` records, then kill -9; returns the acked refs. */
function runAndKill(file: string, acks: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LOADER, file, '300'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const refs: string[] = [];
    let buf = '';
    let killed = false;
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`load writer too slow: ${refs.length} acks; ${stderr}`));
    }, 60_000);
    child.stderr.on('data', (d: Buffer) => { stderr += String(d); });
    child.stdout.on('data', (d: Buffer) => {
      buf += String(d);
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith('K')) refs.push(l);
      if (!killed && refs.length >= acks) {
        killed = true;
        child.kill('SIGKILL'); // in the middle of its batches
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') reject(new Error(`load writer exited ${code}: ${stderr}`));
      else resolve(refs);
    });
  });
}

t.test('kill -9 under load loses no record whose begin() resolved; the next start seals the rest', async (t) => {
  const dir = t.testdir();
  const cfg = journalCfg(dir);
  const acked = await runAndKill(cfg.path, 20_000);
  t.ok(acked.length >= 20_000);

  const db = new Database(cfg.path, { readonly: true });
  const have = new Set((db.prepare('SELECT ref FROM records').all() as Array<{ ref: string }>).map((r) => r.ref));
  const unsealedBefore = (db.prepare('SELECT count(*) AS n FROM records WHERE blk IS NULL OR blk > (SELECT coalesce(max(seq), 0) FROM blocks)').get() as { n: number }).n;
  db.close();
  const lost = acked.filter((r) => !have.has(r));
  t.same(lost.slice(0, 10), [], 'no acknowledged record lost');
  t.equal(lost.length, 0);
  t.ok(unsealedBefore > 0, `the crash left ${unsealedBefore} open or unsealed records`);

  await withJournal(cfg, async (j) => {
    t.equal(j.recovered, unsealedBefore, 'the next start sealed them as they were');
  });
  const v = cli(['verify', '--journal', cfg.path, '--json']);
  t.equal(v.code, 0, v.stdout);
  t.match(JSON.parse(v.stdout), { ok: true, openRecords: 0 });
  t.equal((JSON.parse(v.stdout) as { records: number }).records, have.size);
});
